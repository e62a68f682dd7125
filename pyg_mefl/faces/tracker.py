"""One ``face_id`` per face through a video: boxes matched from frame to frame by their overlap."""
from typing import List, Optional

import torch
from torch import Tensor


def box_iou(boxes: Tensor, others: Tensor) -> Tensor:
    """Intersection over union ``[n, m]`` of boxes ``[n, 4]`` and ``[m, 4]`` (x1, y1, x2, y2)."""
    top_left = torch.maximum(boxes[:, None, :2], others[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], others[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    area_other = (others[:, 2:] - others[:, :2]).clamp(min=0).prod(-1)
    union = area[:, None] + area_other[None, :] - intersection
    return intersection / union.clamp(min=1e-12)


class FaceTracker:
    r"""Gives each face of a video a ``face_id`` that stays with it while it moves.

    A live track is a face id with the box it had when last seen. In each frame the pairs
    (face, live track) are taken in decreasing order of their boxes' intersection over union;
    a pair is matched when neither was matched yet and the IoU is at least ``min_iou``. A face
    gets a **new id** when it overlaps no live track that much: it has just appeared, the shot
    has changed, or it moved more than about half its width since it was last seen. A track ends
    when its face has been missing for more than ``max_gap`` seconds (a blink of the detector or
    a hand across the face keeps the id; a face that leaves and comes back later gets a new one).
    Ids are 0, 1, 2, ... in order of appearance and never reused within a video. No appearance
    model is used: two people who swap places behind each other can swap ids.

    Args:
        min_iou (float): The least overlap of a face's box with a track's last box that
            continues the track.
        max_gap (float): How long, in seconds, a track waits for its face.
    """

    def __init__(self, min_iou: float = 0.3, max_gap: float = 1.0):
        if not 0 < min_iou <= 1:
            raise ValueError(f"min_iou: expected a value in (0, 1], got {min_iou}")
        if max_gap < 0:
            raise ValueError(f"max_gap: expected seconds >= 0, got {max_gap}")
        self.min_iou, self.max_gap = float(min_iou), float(max_gap)
        self.reset()

    def reset(self) -> None:
        """Forget every track (a new video starts)."""
        self.next_id = 0
        self.ids: List[int] = []
        self.boxes = torch.zeros(0, 4)
        self.last_seen: List[float] = []

    def update(self, boxes: Tensor, time: Optional[float]) -> List[int]:
        """The ids of the faces ``boxes`` ``[n, 4]`` seen at ``time`` (seconds; frames must come
        in order of time)."""
        boxes = boxes.detach().to("cpu", torch.float32).reshape(-1, 4)
        time = 0.0 if time is None else float(time)
        live = [k for k, seen in enumerate(self.last_seen) if time - seen <= self.max_gap]
        self.ids = [self.ids[k] for k in live]
        self.boxes = self.boxes[live]
        self.last_seen = [self.last_seen[k] for k in live]
        assigned: List[Optional[int]] = [None] * boxes.size(0)
        if boxes.size(0) and self.boxes.size(0):
            overlap = box_iou(boxes, self.boxes)
            order = torch.argsort(overlap.flatten(), descending=True, stable=True).tolist()
            taken = set()
            for flat in order:
                face, track = divmod(flat, self.boxes.size(0))
                if overlap[face, track] < self.min_iou:
                    break
                if assigned[face] is None and track not in taken:
                    assigned[face] = track
                    taken.add(track)
        out = []
        new_boxes = self.boxes.clone()
        for face, track in enumerate(assigned):
            if track is None:
                self.ids.append(self.next_id)
                self.last_seen.append(time)
                new_boxes = torch.cat([new_boxes, boxes[face:face + 1]])
                out.append(self.next_id)
                self.next_id += 1
            else:
                new_boxes[track] = boxes[face]
                self.last_seen[track] = time
                out.append(self.ids[track])
        self.boxes = new_boxes
        return out
