"""Photos and videos of people to AU probabilities: one row per input, frame and face."""
import os
import queue
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..io.media import Frame, InputError, Source, collect_sources, read_image, read_video, to_rgb
from ..models.preprocessing import published_preprocessing
from .crops import DEFAULT_MARGIN, aligned_face_crop, mexca_face_crops, square_face_crop
from .detector import FaceDetector, FrameFaces, frame_tensor
from .tracker import FaceTracker

CROPS = ("auto", "mexca", "square", "aligned")
FRAMES_TOGETHER = 8
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class FaceRow:
    """One face of one frame, or a frame without a face (``success`` False, the rest None).

    Attributes:
        input (str): The file's path as given, or ``"<image k>"`` for the k-th in-memory image.
        frame (int): The frame's number in decoding order (0 for a photo).
        timestamp (float): Seconds of video time, from the stream's timestamps (0 for a photo).
        face_id (int, optional): The face's id: kept through a video by :class:`FaceTracker`;
            in a photo the faces' order, largest first.
        confidence (float, optional): The detector's face probability (None for whole images).
        success (bool): Whether a face was found and predicted.
        box (list of float, optional): ``[x1, y1, x2, y2]`` in the input's pixels.
        landmarks (list of float, optional): ``[x, y]`` of :data:`LANDMARK_NAMES`, flattened.
        probs (list of float, optional): The AU probabilities, in the model's ``au_names`` order.
    """
    input: str
    frame: int
    timestamp: float
    face_id: Optional[int] = None
    confidence: Optional[float] = None
    success: bool = False
    box: Optional[List[float]] = None
    landmarks: Optional[List[float]] = None
    probs: Optional[List[float]] = None


ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, Tensor]


class FaceAUPipeline:
    r"""A face detector, face crops and a whole AU model: photos and videos of people to one
    :class:`FaceRow` per input, frame and face. A frame without a face gives one row with
    ``success`` False, so that frames stay aligned with the video.

    With a mexca model and the default detector the faces, crops and probabilities are those of
    mexca's own pipeline (:mod:`~pyg_mefl.faces.crops`). ``detector=None`` takes each image whole
    as one face crop, through the model's own ``transform`` (the crop-level path of
    :meth:`~pyg_mefl.FaceAUModel.predict`).

    Args:
        model (FaceAUModel): A whole model with a backbone and a ``transform``, e.g. from
            :meth:`~pyg_mefl.FaceAUModel.from_pretrained`; run in eval mode.
        detector (FaceDetector, optional): Finds the faces; :obj:`None` for inputs that are
            face crops already. Default: a :class:`FaceDetector` with mexca's settings.
        crop (str): ``"auto"`` (``"mexca"`` for a mexca model, else ``"square"``), ``"mexca"``,
            ``"square"`` or ``"aligned"`` (see :mod:`~pyg_mefl.faces.crops`).
        margin (float): The square and aligned crops' margin around the box.
        batch_size (int): Faces per model batch; the faces of several frames share a batch.
        tracker (FaceTracker, optional): Keeps face ids through a video; reset at each new
            video. Default: IoU 0.3, and a track waits 1 s for its face, or two sampled frames
            when ``fps`` samples fewer than 2 frames a second.
        fps (float, optional): Frames per second sampled from videos (default: every frame).
        precision (str): ``"fp32"`` (exact to the published models), ``"bf16"`` (bfloat16
            autocast of the backbone and the head: faster on CPUs with AMX or AVX-512-BF16 and on
            GPUs) or ``"fp16"`` (CUDA only). The detector always runs in float32, so the faces
            found do not change.
        overlap (bool, optional): Find and cut the faces of the next frames in a background
            thread while the model runs (same rows either way). Default: on for a model on a GPU,
            off on a CPU, where the stages compete for the same cores (no gain on 2 cores, 160 MB
            more peak memory: ``benchmarks/README.md``).
    """

    def __init__(self, model, detector: Union[FaceDetector, None, str] = "default",
                 crop: str = "auto", margin: float = DEFAULT_MARGIN, batch_size: int = 8,
                 tracker: Optional[FaceTracker] = None, fps: Optional[float] = None,
                 precision: str = "fp32", overlap: Optional[bool] = None):
        if getattr(model, "backbone", None) is None or getattr(model, "transform", None) is None:
            raise ValueError("model: expected a whole model with a backbone and a transform, "
                             "e.g. FaceAUModel.from_pretrained(...)")
        if crop not in CROPS:
            raise ValueError(f"crop: expected one of {CROPS}, got {crop!r}")
        if crop == "mexca" and getattr(model, "source", None) != "mexca":
            raise ValueError(f"crop='mexca' is mexca's preprocessing; the model's source is "
                             f"{model.source!r} (use 'square' or 'aligned')")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive number, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {tuple(PRECISIONS)}, got {precision!r}")
        self.model = model.eval()
        self.detector = FaceDetector() if detector == "default" else detector
        if crop == "auto":  # the source's own crops (published_preprocessing), else square
            crop = published_preprocessing(model.source)["face_crop"] if model.source \
                else "square"
        self.crop = crop
        self.margin, self.batch_size, self.fps = float(margin), int(batch_size), fps
        # a track waits for its face at least two sampled frames
        self.tracker = tracker or FaceTracker(max_gap=max(1.0, 2.0 / fps) if fps else 1.0)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision='fp16' runs on CUDA only; on a CPU use 'bf16'")
        self.precision = precision
        self.overlap = self.device.type == "cuda" if overlap is None else bool(overlap)
        self._tracked: Optional[Source] = None  # the video whose faces the tracker follows

    def __call__(self, inputs: Union[ImageLike, Sequence[ImageLike]]) -> Iterator[FaceRow]:
        """The rows of ``inputs`` (a path to a photo, a video or a folder of them, a PIL image, an
        ``[H, W, 3]`` uint8 array or tensor, or a list of these), in input order; an input that
        cannot be read raises :class:`~pyg_mefl.io.InputError`."""
        for item in self.rows(inputs):
            if isinstance(item, InputError):
                raise item
            yield item

    def rows(self, inputs) -> Iterator[Union[FaceRow, InputError]]:
        """As :meth:`__call__`, but each problem with an input is yielded as an
        :class:`~pyg_mefl.io.InputError` (and the other inputs go on)."""
        return self.rows_of_frames(self.frames(inputs))

    def frames(self, inputs) -> Iterator[Union[Frame, InputError]]:
        """The RGB frames of ``inputs``, and an :class:`~pyg_mefl.io.InputError` for each one
        that cannot be read."""
        if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray, Tensor)):
            inputs = [inputs]
        for number, item in enumerate(inputs):
            if isinstance(item, (str, os.PathLike)):
                sources, problems = collect_sources([os.fspath(item)])
                yield from problems
                for source in sources:
                    yield from read_source(source, self.fps)
            else:
                try:
                    yield in_memory_frame(item, number)
                except InputError as error:
                    yield error

    def rows_of_frames(self, frames: Iterable[Union[Frame, InputError]]
                       ) -> Iterator[Union[FaceRow, InputError]]:
        """The rows of already decoded frames. The faces of several frames (of one size) make
        one model batch; with ``overlap`` a background thread finds and cuts the faces of the
        next frames while the model runs on the faces of the last ones."""
        prepared = map(self._prepare, self._chunks(frames))
        if self.overlap:
            prepared = ahead(prepared, depth=2)
        for item in prepared:
            if isinstance(item, InputError):
                yield item
                continue
            chunk, found, crops = item
            yield from self._emit(chunk, found, self._probabilities(crops))

    def _chunks(self, frames: Iterable[Union[Frame, InputError]]
                ) -> Iterator[Union[List[Frame], InputError]]:
        """Runs of consecutive frames of one size and one video (or of photos), at most
        :meth:`_chunk` long; problems in their place."""
        pending: List[Frame] = []
        for item in frames:
            if isinstance(item, InputError):
                if pending:
                    yield pending
                pending = []
                yield item
                continue
            if pending and (pending[0].image.size != item.image.size
                            or len(pending) >= self._chunk()
                            or (item.source is not pending[-1].source
                                and item.source.kind == "video")):
                yield pending
                pending = []
            pending.append(item)
        if pending:
            yield pending

    def _chunk(self) -> int:
        """Frames taken together: the detector's batches, and the faces of all of them share
        model batches."""
        if self.detector is None:
            return self.batch_size
        return max(self.detector.batch_frames, FRAMES_TOGETHER)

    def _prepare(self, chunk):
        """``(frames, faces found, model inputs)`` of a chunk of frames (a problem as it is)."""
        if isinstance(chunk, InputError):
            return chunk
        if self.detector is None:
            crops = torch.stack([self.model.transform(frame.image) for frame in chunk])
            return chunk, [None] * len(chunk), crops
        tensors = [frame_tensor(frame.image) for frame in chunk]
        found = self.detector.detect(torch.stack(tensors))
        return chunk, found, self._crops(chunk, tensors, found)

    def _emit(self, frames: List[Frame], found: List[Optional[FrameFaces]],
              probs: List[List[float]]) -> Iterator[FaceRow]:
        """The rows of ``frames``; face ids through a video from the tracker, reset at each new
        video."""
        offset = 0
        for frame, faces in zip(frames, found):
            time = 0.0 if frame.time is None else float(frame.time)
            base = dict(input=frame.source.path, frame=frame.index or 0, timestamp=time)
            if faces is None:  # the whole image is the face
                width, height = frame.image.size
                yield FaceRow(**base, face_id=0, success=True,
                              box=[0.0, 0.0, float(width), float(height)], probs=probs[offset])
                offset += 1
                continue
            ids = list(range(len(faces)))
            if frame.source.kind == "video":
                if frame.source is not self._tracked:
                    self.tracker.reset()
                    self._tracked = frame.source
                ids = self.tracker.update(faces.boxes, time)
            if len(faces) == 0:
                yield FaceRow(**base)
            for k in range(len(faces)):
                yield FaceRow(**base, face_id=ids[k], confidence=float(faces.scores[k]),
                              success=True, box=faces.boxes[k].tolist(),
                              landmarks=faces.landmarks[k].flatten().tolist(),
                              probs=probs[offset + k])
            offset += len(faces)

    def _crops(self, frames: List[Frame], tensors: List[Tensor],
               found: List[FrameFaces]) -> Tensor:
        crops = []
        for frame, tensor, faces in zip(frames, tensors, found):
            if not len(faces):
                continue
            if self.crop == "mexca":
                crops.append(mexca_face_crops(tensor, faces.boxes))
                continue
            for box, points in zip(faces.boxes.tolist(), faces.landmarks.numpy()):
                face = (aligned_face_crop(frame.image, points, self.margin)
                        if self.crop == "aligned"
                        else square_face_crop(frame.image, box, self.margin))
                crops.append(self.model.transform(face).unsqueeze(0))
        return torch.cat(crops) if crops else torch.zeros(0, 3, 224, 224)

    def _probabilities(self, crops: Tensor) -> List[List[float]]:
        out: List[List[float]] = []
        for start in range(0, crops.size(0), self.batch_size):
            batch = crops[start:start + self.batch_size].to(self.device, self.dtype)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, PRECISIONS[self.precision] or torch.float32,
                                enabled=self.precision != "fp32"):
                probs = self.model.predict(batch)
            out.extend(probs.float().cpu().tolist())
        return out


def ahead(items: Iterable, depth: int) -> Iterator:
    """``items``, computed by a background thread at most ``depth`` ahead of the consumer; an
    exception in the thread is raised in the consumer."""
    box: "queue.Queue" = queue.Queue(maxsize=depth)
    done = object()

    def produce():
        try:
            for item in items:
                box.put((item, None))
        except BaseException as error:  # re-raised where the items are consumed
            box.put((None, error))
        box.put((done, None))

    threading.Thread(target=produce, daemon=True).start()
    while True:
        item, error = box.get()
        if error is not None:
            raise error
        if item is done:
            return
        yield item


def read_source(source: Source, fps: Optional[float] = None, min_size: int = 1
                ) -> Iterator[Union[Frame, InputError]]:
    """The frames of one photo or video file, then its problems (as items, not raised)."""
    late: List[InputError] = []
    try:
        if source.kind == "image":
            yield read_image(source, min_size)
        else:
            yield from read_video(source, fps, min_size, late)
    except InputError as error:
        yield error
    yield from late


def in_memory_frame(image, number: int) -> Frame:
    """A PIL image, a uint8 array ``[H, W]`` / ``[H, W, 3]`` or a uint8 tensor ``[H, W, 3]`` /
    ``[3, H, W]`` as an RGB :class:`~pyg_mefl.io.Frame`."""
    label = f"<image {number}>"
    if isinstance(image, Tensor):
        if image.dim() == 3 and image.size(0) == 3 and image.size(-1) != 3:
            image = image.permute(1, 2, 0)
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
                image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise InputError(label, f"expected a uint8 image [H, W] or [H, W, 3], got "
                                    f"{image.dtype} {list(image.shape)}")
        image = Image.fromarray(np.ascontiguousarray(image.squeeze(-1) if image.ndim == 3
                                                     and image.shape[2] == 1 else image))
    if not isinstance(image, Image.Image):
        raise InputError(label, f"expected a path, a PIL image, an array or a tensor, got "
                                f"{type(image).__name__}")
    rgb, warning = to_rgb(image, label)
    return Frame(Source(label, "image", label), rgb, warning=warning)
