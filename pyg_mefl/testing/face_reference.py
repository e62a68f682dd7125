"""mexca's face pipeline, formulated independently of pyg_mefl from facenet-pytorch's public API
and the published transforms (the test oracle for ``pyg_mefl.faces``).

mexca's ``FaceExtractor``, as published: ``MTCNN(image_size=224, min_face_size=20,
thresholds=(0.6, 0.7, 0.7), factor=0.709, post_process=True, select_largest=True,
keep_all=True)``; each batch of uint8 ``[B, H, W, 3]`` frames goes to ``MTCNN.detect(frames,
landmarks=True)`` and ``MTCNN.extract(frames, boxes, None)``; the crops get ImageNet
``Normalize`` and go to the model, all faces of a frame in one batch; then faces whose box is
under 45 px in width *and* height are dropped (one face at least 45 px in either side is kept).
"""
from dataclasses import dataclass
from typing import List

import numpy as np
import torch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ReferenceFace:
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    probs: np.ndarray


def mexca_mtcnn():
    from facenet_pytorch import MTCNN
    return MTCNN(image_size=224, min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709,
                 post_process=True, select_largest=True, keep_all=True)


def mexca_faces(frames: torch.Tensor, model, batch_size: int = 1) -> List[List[ReferenceFace]]:
    """The faces mexca keeps in each of ``frames`` (uint8 ``[T, H, W, 3]``), with the
    probabilities ``model`` (crops -> probabilities) gives them."""
    from torchvision import transforms
    mtcnn = mexca_mtcnn()
    normalize = transforms.Compose([transforms.ConvertImageDtype(torch.float),
                                    transforms.Normalize(MEAN, STD)])
    out = []
    for start in range(0, frames.size(0), batch_size):
        batch = frames[start:start + batch_size]
        boxes, scores, points = mtcnn.detect(batch, landmarks=True)
        crops = mtcnn.extract(batch, boxes, None)
        for frame_boxes, frame_scores, frame_points, frame_crops in zip(boxes, scores, points,
                                                                        crops):
            kept = []
            if frame_crops is not None:
                with torch.no_grad():
                    probs = model(normalize(frame_crops)).numpy()
                for box, score, landmark, prob in zip(frame_boxes, frame_scores, frame_points,
                                                      probs):
                    width, height = box[2] - box[0], box[3] - box[1]
                    if width >= 45.0 or height >= 45.0:
                        kept.append(ReferenceFace(np.asarray(box, np.float64), float(score),
                                                  np.asarray(landmark, np.float64), prob))
            out.append(kept)
    return out
