r"""Face crops for a model, made as each published source's code makes them.

- **mexca** (its ``FaceExtractor``): the detector's box, its corners truncated to whole pixels
  and clipped to the frame, is cut from the uint8 frame and resized to 224 x 224 by area
  averaging (facenet-pytorch's tensor path, which truncates the result to uint8), standardised
  to :math:`(x - 127.5) / 128` and then ImageNet-normalised. The box's aspect ratio is not kept.
- **OpenGraphAU, ME-GraphAU**: their eval transform (``Resize(256)``, ``CenterCrop(224)``, ...)
  on a square face crop, centred on the box, of side ``max(width, height) * (1 + margin)``; parts
  of it outside the frame are black, as Pillow's ``crop`` pads them. Their code has no detector,
  so the framing is a choice: the default margin, 0, frames a face most like mexca's pipeline
  frames it for the same OpenGraphAU weights (mexca's released model is OpenGraphAU's ResNet-50),
  as measured on real photos and video frames by ``benchmarks/crop_margin.py``.
- **aligned** (an option for the same sources): a similarity transform (rotation, scale,
  translation; Umeyama's least squares) takes the 5 landmarks onto a frontal template, placed
  in the square crop as the box would be, so the eyes are level.
"""
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..models.preprocessing import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, RESIZE

DEFAULT_MARGIN = 0.0
# 5-point frontal template (eyes, nose tip, mouth corners) in a 112 x 112 tight face crop, the
# one widely used for face alignment since ArcFace (Deng et al., 2019)
FRONTAL_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64) / 112.0


def mexca_face_crops(frame: Tensor, boxes: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """The model inputs ``[n, 3, size, size]`` (float32) of the faces ``boxes`` ``[n, 4]`` in the
    uint8 ``[H, W, 3]`` ``frame``, as mexca's pipeline makes them (see the module's notes)."""
    height, width = frame.shape[:2]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    crops = []
    for x1, y1, x2, y2 in boxes.tolist():
        left, top = int(max(x1, 0)), int(max(y1, 0))
        right, bottom = int(min(x2, width)), int(min(y2, height))
        if right <= left or bottom <= top:
            raise ValueError(f"box {[x1, y1, x2, y2]} holds no pixel of the {width}x{height} "
                             f"frame")
        patch = frame[top:bottom, left:right].permute(2, 0, 1).unsqueeze(0).float()
        pixels = F.interpolate(patch, size=(size, size), mode="area").to(torch.uint8)[0]
        crops.append(((pixels.float() - 127.5) / 128.0 - mean) / std)
    if not crops:
        return torch.zeros(0, 3, size, size)
    return torch.stack(crops)


def square_box(box: Sequence[float], margin: float = DEFAULT_MARGIN) -> List[int]:
    """The square ``[left, top, right, bottom]`` (whole pixels) centred on ``box``, of side
    ``max(width, height) * (1 + margin)``."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = round(cx - side / 2.0), round(cy - side / 2.0)
    whole = max(1, round(side))
    return [left, top, left + whole, top + whole]


def square_face_crop(image: Image.Image, box: Sequence[float],
                     margin: float = DEFAULT_MARGIN) -> Image.Image:
    """The square crop of ``image`` around ``box`` (see :func:`square_box`), black outside the
    image, for a source's eval transform."""
    return image.crop(square_box(box, margin))


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The ``[2, 3]`` similarity transform (scale, rotation, translation, no reflection) that
    takes the points ``source`` ``[k, 2]`` closest to ``target`` in least squares (Umeyama,
    1991)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    centred_s, centred_t = source - mean_s, target - mean_t
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    variance = (centred_s ** 2).sum() / len(source)
    scale = (singular * np.diag(sign)).sum() / variance
    translation = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, translation[:, None]])


def aligned_face_crop(image: Image.Image, landmarks: np.ndarray,
                      margin: float = DEFAULT_MARGIN, size: int = RESIZE) -> Image.Image:
    """A ``size`` x ``size`` crop of ``image`` in which the face's 5 ``landmarks`` ``[5, 2]``
    lie on the frontal template, scaled as :func:`square_face_crop` scales the box (bilinear,
    black outside the image)."""
    tight = size / (1.0 + margin)  # the box's side in the output
    template = FRONTAL_TEMPLATE * tight + (size - tight) / 2.0
    forward = np.vstack([similarity_transform(landmarks, template), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2].reshape(-1)  # output pixel -> input pixel
    return image.transform((size, size), Image.AFFINE, data=tuple(inverse),
                           resample=Image.BILINEAR)
