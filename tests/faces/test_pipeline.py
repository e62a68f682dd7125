"""FaceAUPipeline with a mexca model against mexca's own face pipeline (``face_reference``:
facenet-pytorch's MTCNN.detect / MTCNN.extract, ImageNet Normalize, the model composed from
torchvision and the dense head) on the same decoded frames: the same faces, boxes within 1 px,
probabilities within 1e-4; photos with several faces, one face and none; a video made from them
at a variable frame rate."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import decoded_frames
from pyg_mefl.testing.face_reference import mexca_faces
from pyg_mefl.faces import FaceAUPipeline, FaceDetector, FrameFaces, box_iou, mexca_face_crops
from pyg_mefl.io import InputError
from real_media import MULTI_FACE, NO_FACE, SAME_SIZE, SINGLE_FACE, media

BOX_TOL, PROB_TOL = 1.0, 1e-4


def _assert_same_faces(rows, reference_faces):
    """The rows of one frame against the faces mexca keeps in it."""
    if not reference_faces:
        assert len(rows) == 1 and not rows[0].success and rows[0].probs is None
        return
    assert [row.success for row in rows] == [True] * len(reference_faces)
    for row, face in zip(rows, reference_faces):
        assert np.abs(np.array(row.box) - face.box).max() <= BOX_TOL
        assert np.abs(np.array(row.landmarks) - face.landmarks.reshape(-1)).max() <= BOX_TOL
        assert row.confidence == pytest.approx(face.score, abs=1e-5)
        assert np.abs(np.array(row.probs) - face.probs).max() <= PROB_TOL


@pytest.fixture(scope="module")
def pipeline(mexca_model):
    return FaceAUPipeline(mexca_model, batch_size=4)


def test_photos_give_mexcas_faces_and_probabilities(pipeline, mexca_pair, photos):
    reference = mexca_pair[0]
    names = {"multi": MULTI_FACE, "single": SINGLE_FACE, "none": NO_FACE}
    rows = list(pipeline([str(media(names[k])) for k in ("multi", "single", "none")]))
    for key in ("multi", "single", "none"):
        pixels = torch.from_numpy(np.array(photos[key]))[None]
        expected = mexca_faces(pixels, reference)[0]
        mine = [row for row in rows if row.input == str(media(names[key]))]
        _assert_same_faces(mine, expected)
        assert all(row.frame == 0 and row.timestamp == 0.0 for row in mine)
    group = [row for row in rows if row.input == str(media(MULTI_FACE))]
    assert len(group) >= 4  # the group photo shows five people
    assert [row.face_id for row in group] == list(range(len(group)))
    areas = [(r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) for r in group]
    assert areas == sorted(areas, reverse=True)  # largest first, as mexca's MTCNN orders them


def test_in_memory_images_give_the_rows_of_their_files(pipeline, photos):
    from_file = list(pipeline(str(media(SINGLE_FACE))))
    for image in (photos["single"], np.array(photos["single"]),
                  torch.from_numpy(np.array(photos["single"])).permute(2, 0, 1)):
        rows = list(pipeline(image))
        assert rows[0].input == "<image 0>"
        assert [r.box for r in rows] == [r.box for r in from_file]
        assert [r.probs for r in rows] == [r.probs for r in from_file]


def test_video_frames_give_mexcas_faces_with_stream_timestamps(pipeline, mexca_pair,
                                                               people_video):
    path, times = people_video
    frames, decoded_times = decoded_frames(path)
    expected = mexca_faces(frames, mexca_pair[0])
    rows = list(pipeline(str(path)))
    assert sorted({row.frame for row in rows}) == list(range(len(times)))
    for number, faces in enumerate(expected):
        mine = [row for row in rows if row.frame == number]
        _assert_same_faces(mine, faces)
        assert [row.timestamp for row in mine] == pytest.approx([times[number]] * len(mine),
                                                                 abs=1e-3)
    assert decoded_times == pytest.approx(times, abs=1e-3)  # a variable frame rate
    # the panning group keeps its ids over the first four frames
    first = {tuple(np.round(r.box)): r.face_id for r in rows if r.frame == 0}
    assert sorted(r.face_id for r in rows if r.frame == 3) == sorted(first.values())
    assert not any(r.success for r in rows if r.frame == 6)  # the landscape


def test_photos_of_one_size_give_mexcas_faces(pipeline, mexca_pair):
    """Four 512 x 512 photos, which the pipeline takes together: detected one by one as mexca
    does (facenet's batched cascade moves one of these boxes by 4 px)."""
    paths = [media(name) for name in SAME_SIZE]
    rows = list(pipeline([str(p) for p in paths]))
    for path in paths:
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB")))[None]
        _assert_same_faces([r for r in rows if r.input == str(path)],
                           mexca_faces(pixels, mexca_pair[0])[0])


def test_small_faces_are_dropped_as_mexca_drops_them(photos):
    pixels = torch.from_numpy(np.array(photos["multi"].resize((400, 267))))
    everything = FaceDetector(min_box_size=0).detect(pixels)[0]
    kept = FaceDetector(min_box_size=45).detect(pixels)[0]
    sizes = everything.boxes[:, 2:] - everything.boxes[:, :2]
    assert len(everything) > len(kept)  # the downsized group photo has faces under 45 px
    assert len(kept) == int(((sizes >= 45).any(1)).sum())


def test_a_frame_smaller_than_the_smallest_face_has_no_face():
    found = FaceDetector().detect(torch.full((2, 15, 40, 3), 128, dtype=torch.uint8))
    assert [len(f) for f in found] == [0, 0]


def test_whole_mode_takes_each_image_as_one_face_crop(mexca_model, photos):
    rows = list(FaceAUPipeline(mexca_model, detector=None)([photos["single"], photos["none"]]))
    images = torch.stack([mexca_model.transform(photos[k]) for k in ("single", "none")])
    expected = mexca_model.predict(images)
    assert [r.success for r in rows] == [True, True]
    assert torch.allclose(torch.tensor([r.probs for r in rows]), expected, atol=1e-6)
    assert rows[0].box == [0.0, 0.0, *map(float, photos["single"].size)]


def test_bad_inputs(mexca_model, tmp_path):
    pipeline = FaceAUPipeline(mexca_model)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        list(pipeline(str(tmp_path / "broken.jpg")))
    items = list(pipeline.rows([str(tmp_path / "broken.jpg"), np.zeros((40, 40, 3), np.uint8)]))
    assert isinstance(items[0], InputError) and not items[1].success
    with pytest.raises(InputError, match="uint8"):
        list(pipeline(np.zeros((40, 40, 3), np.float32)))
    with pytest.raises(ValueError, match="crop"):
        FaceAUPipeline(mexca_model, crop="tight")
    with pytest.raises(ValueError, match="whole model"):
        FaceAUPipeline(torch.nn.Linear(2, 2))


def test_empty_crop_box_is_a_value_error():
    with pytest.raises(ValueError, match="no pixel"):
        mexca_face_crops(torch.zeros(10, 10, 3, dtype=torch.uint8),
                         torch.tensor([[12.0, 0, 20, 5]]))
    assert FrameFaces.empty().boxes.shape == (0, 4)


def test_boxes_without_a_pixel_of_the_frame_are_dropped():
    detector = FaceDetector(min_box_size=0)
    # inside; left of the frame; right of it; within one pixel column; one pixel at the corner
    boxes = np.array([[10.2, 10.0, 60.0, 70.0], [-50.0, 5.0, -0.5, 40.0],
                      [100.5, 5.0, 140.0, 9.7], [20.1, 30.0, 20.9, 60.0],
                      [99.3, 79.2, 130.0, 90.0]])
    kept = detector._keep(boxes, np.ones(5), np.zeros((5, 5, 2)), width=100, height=80)
    assert torch.allclose(kept.boxes, torch.tensor(boxes[[0, 4]], dtype=torch.float32))
    frame = torch.zeros(80, 100, 3, dtype=torch.uint8)
    assert mexca_face_crops(frame, kept.boxes).shape == (2, 3, 224, 224)


def test_exif_orientation_and_grayscale_photos_give_the_upright_faces(pipeline, photos,
                                                                      tmp_path):
    """A phone photo stored sideways with its EXIF orientation tag (6: rotate 90 degrees
    clockwise to show) gives the faces of the upright photo; a grayscale copy is read as RGB."""
    upright = photos["single"]
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor stored
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    upright.convert("L").save(tmp_path / "gray.jpg", quality=95)
    rows = {name: list(pipeline(str(tmp_path / f"{name}.jpg")))
            for name in ("phone", "upright", "gray")}
    assert all(len(r) == 1 and r[0].success for r in rows.values())

    def overlap(name):
        return box_iou(torch.tensor([rows[name][0].box]),
                       torch.tensor([rows["upright"][0].box])).item()

    def eye_line_degrees(row):
        (x1, y1), (x2, y2) = np.array(row.landmarks[:4]).reshape(2, 2)
        return abs(np.degrees(np.arctan2(y2 - y1, x2 - x1)))

    assert overlap("phone") > 0.95 and overlap("gray") > 0.8
    assert eye_line_degrees(rows["phone"][0]) < 10
    unrotated = list(pipeline(sideways))  # the same pixels without the tag: a sideways face
    assert not unrotated[0].success or eye_line_degrees(unrotated[0]) > 45
