"""FaceTracker: ids follow boxes that overlap from frame to frame, new ids for new faces, after a
gap longer than max_gap, and never reused; the IoU against a formula written out per pair."""
import pytest
import torch

from pyg_mefl.faces import FaceTracker, box_iou


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def _iou_by_hand(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_box_iou_matches_the_formula_per_pair():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(7, 2, generator=generator) * 50
    sizes = torch.rand(7, 2, generator=generator) * 30 + 1
    boxes = torch.cat([corners, corners + sizes], 1)
    got = box_iou(boxes[:4], boxes[4:])
    for i in range(4):
        for j in range(3):
            assert got[i, j].item() == pytest.approx(_iou_by_hand(boxes[i].tolist(),
                                                                  boxes[4 + j].tolist()), abs=1e-6)
    assert box_iou(boxes, boxes).diagonal().allclose(torch.ones(7))


def test_ids_follow_moving_faces_in_any_detection_order():
    tracker = FaceTracker()
    assert tracker.update(_boxes([0, 0, 50, 50], [200, 0, 250, 50]), 0.0) == [0, 1]
    # the detector lists them the other way round, both moved by 10 px
    assert tracker.update(_boxes([210, 5, 260, 55], [10, 5, 60, 55]), 0.04) == [1, 0]
    assert tracker.update(_boxes([20, 10, 70, 60]), 0.08) == [0]  # face 1 missing one frame
    assert tracker.update(_boxes([30, 10, 80, 60], [215, 5, 265, 55]), 0.12) == [0, 1]


def test_new_face_new_gap_and_far_jump_get_new_ids_never_reused():
    tracker = FaceTracker(min_iou=0.3, max_gap=0.5)
    assert tracker.update(_boxes([0, 0, 50, 50]), 0.0) == [0]
    assert tracker.update(_boxes([0, 0, 50, 50], [100, 100, 140, 140]), 0.1) == [0, 1]
    assert tracker.update(_boxes([0, 0, 50, 50]), 0.2) == [0]
    # face 0 jumped 30 px (IoU 0.25 < 0.3): a new id
    assert tracker.update(_boxes([30, 0, 80, 50]), 0.3) == [2]
    # face 1 back after 0.8 s (> max_gap): a new id
    assert tracker.update(_boxes([100, 100, 140, 140]), 0.9) == [3]
    tracker.reset()
    assert tracker.update(_boxes([0, 0, 50, 50]), 0.0) == [0]


def test_one_track_goes_to_the_face_that_overlaps_it_most():
    tracker = FaceTracker()
    tracker.update(_boxes([0, 0, 100, 100]), 0.0)
    # two faces overlap the old box; the one overlapping most keeps id 0
    assert tracker.update(_boxes([40, 0, 140, 100], [5, 0, 105, 100]), 0.04) == [1, 0]


@pytest.mark.parametrize("kwargs", [dict(min_iou=0.0), dict(min_iou=1.5), dict(max_gap=-1)])
def test_bad_settings_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        FaceTracker(**kwargs)


def test_pipeline_tracker_waits_two_sampled_frames_at_low_fps(mexca_model):
    from pyg_mefl.faces import FaceAUPipeline
    assert FaceAUPipeline(mexca_model, detector=None).tracker.max_gap == 1.0
    assert FaceAUPipeline(mexca_model, detector=None, fps=5).tracker.max_gap == 1.0
    assert FaceAUPipeline(mexca_model, detector=None, fps=0.5).tracker.max_gap == 4.0
