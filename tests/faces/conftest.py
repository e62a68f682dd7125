"""A mexca model of random weights (ResNet-18 trunk under mexca's layout, 27 + 14 AUs) written
as mexca's ``save_pretrained`` writes it, beside the same model composed from torchvision and the
dense head; real photos and a video made from them."""
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from pyg_mefl.testing.published_models import (ReferenceModel, random_backbone_state,
                                               reference_head, save_hub_directory,
                                               whole_model_state)
from real_media import MULTI_FACE, NO_FACE, SINGLE_FACE, media

pytest.importorskip("facenet_pytorch")
pytest.importorskip("torchvision")
CHANNELS, SEED = 128, 5


@pytest.fixture(scope="session")
def mexca_pair(tmp_path_factory):
    """(reference model: crops -> probabilities, the model directory)."""
    head = reference_head(2, "mexca", CHANNELS, 27, 14, SEED)
    trunk = random_backbone_state("resnet18", SEED)
    reference = ReferenceModel("resnet18", trunk, head, CHANNELS, SEED).eval()
    state = whole_model_state(trunk, reference.global_linear, head, 2, "mexca")
    directory = tmp_path_factory.mktemp("mexca") / "mefarg"
    save_hub_directory(state, directory)
    return reference, directory


@pytest.fixture(scope="session")
def mexca_model(mexca_pair):
    from pyg_mefl import FaceAUModel
    return FaceAUModel.from_pretrained(str(mexca_pair[1])).eval()


def rgb(name, width=None):
    """A real photo as RGB, resized to ``width`` px wide if given."""
    with Image.open(media(name)) as image:
        image = image.convert("RGB")
    if width:
        image = image.resize((width, round(image.height * width / image.width)), Image.BILINEAR)
    return image


@pytest.fixture(scope="session")
def photos():
    return {"multi": rgb(MULTI_FACE), "single": rgb(SINGLE_FACE), "none": rgb(NO_FACE)}


def write_video(path, frames, times, codec="mpeg4"):
    """A video of ``frames`` (RGB uint8 arrays of one size) shown at ``times`` (seconds, 1 ms
    steps), so a variable frame rate is possible; returns the path."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.bit_rate = 8_000_000
        for pixels, time in zip(frames, times):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            frame.pts = round(time * 1000)
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_frames(path):
    """The video's frames (uint8 ``[T, H, W, 3]``) and their times, decoded with PyAV."""
    with av.open(str(path)) as container:
        frames = [(f.to_ndarray(format="rgb24"), float(f.time)) for f in container.decode(video=0)]
    return torch.from_numpy(np.stack([f for f, _ in frames])), [t for _, t in frames]


@pytest.fixture(scope="session")
def people_video(tmp_path_factory, photos):
    """640 x 480: the group photo panning right, the single face, the landscape, the group
    again; at a variable frame rate."""
    size = (640, 480)
    group = np.asarray(photos["multi"].resize((800, 480), Image.BILINEAR))
    single = np.asarray(photos["single"].resize(size, Image.BILINEAR))
    landscape = np.asarray(photos["none"].resize(size, Image.BILINEAR))
    frames = [group[:, 8 * k:8 * k + 640] for k in range(4)] + [single, single, landscape] \
        + [group[:, 100:740]]
    times = [0.0, 0.04, 0.08, 0.2, 0.25, 0.3, 0.5, 0.533]
    path = write_video(tmp_path_factory.mktemp("video") / "people.mp4", frames, times)
    return path, times
