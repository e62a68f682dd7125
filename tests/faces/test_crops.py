"""Face crops: mexca's against facenet-pytorch's own MTCNN.extract; the square crop's geometry;
the similarity transform against a known one; aligned crops put the landmarks on the template."""
import math

import numpy as np
import torch
from PIL import Image

from pyg_mefl.testing.face_reference import MEAN, STD, mexca_mtcnn
from pyg_mefl.faces import (DEFAULT_MARGIN, FaceDetector, aligned_face_crop, mexca_face_crops,
                            similarity_transform, square_box, square_face_crop)
from pyg_mefl.faces.crops import FRONTAL_TEMPLATE


def test_mexca_crops_equal_facenets_extract_then_imagenet_normalisation(photos):
    pixels = torch.from_numpy(np.array(photos["multi"]))
    # boxes inside, across and at the frame's edges, with fractional corners
    boxes = torch.tensor([[220.7, 65.2, 302.9, 174.5], [-10.5, -3.2, 60.1, 80.9],
                          [950.3, 600.6, 1010.0, 700.0]])
    mine = mexca_face_crops(pixels, boxes)
    facenet = mexca_mtcnn().extract(pixels[None], [boxes.numpy()], None)[0]
    expected = (facenet - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert mine.shape == (3, 3, 224, 224)
    assert torch.allclose(mine, expected, atol=1e-6)


def test_square_box_is_centred_with_the_margin():
    left, top, right, bottom = square_box([100, 50, 180, 150], margin=0.5)
    assert right - left == bottom - top == 150  # 100 px longer side * 1.5
    assert ((left + right) / 2, (top + bottom) / 2) == (140, 100)
    left, _, right, _ = square_box([0, 0, 224, 224])
    assert right - left == round(224 * (1 + DEFAULT_MARGIN))


def test_square_crop_is_black_outside_the_image():
    image = Image.new("RGB", (100, 100), (200, 100, 50))
    crop = square_face_crop(image, [60, 60, 100, 100], margin=1.0)  # 80 px around (80, 80)
    assert crop.size == (80, 80)
    assert crop.getpixel((79, 79)) == (0, 0, 0) and crop.getpixel((10, 10)) == (200, 100, 50)


def test_similarity_transform_recovers_a_known_one():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = np.random.default_rng(0).uniform(0, 100, (5, 2))
    moved = points @ (scale * rotation).T + shift
    matrix = similarity_transform(points, moved)
    assert np.allclose(matrix[:, :2], scale * rotation) and np.allclose(matrix[:, 2], shift)


def test_aligned_crop_puts_a_rotated_faces_landmarks_on_the_template(photos):
    image = photos["single"].rotate(25, resample=Image.BILINEAR, expand=True)
    detector = FaceDetector()
    face = detector.detect(torch.from_numpy(np.array(image)))[0]
    assert len(face) == 1
    crop = aligned_face_crop(image, face.landmarks[0].numpy())
    assert crop.size == (256, 256)
    again = detector.detect(torch.from_numpy(np.array(crop)))[0]
    tight = 256 / (1 + DEFAULT_MARGIN)
    template = FRONTAL_TEMPLATE * tight + (256 - tight) / 2
    # found again in the aligned crop, the eyes are level, at the template's place and distance
    # (the rest of the face is matched in least squares, not exactly: its shape is its own)
    def eye_line_degrees(eyes):
        return math.degrees(math.atan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0]))

    eyes = again.landmarks[0, :2].numpy()
    assert abs(eye_line_degrees(eyes)) < 3.0
    assert np.abs(eyes.mean(0) - template[:2].mean(0)).max() < 6.0
    distance = np.linalg.norm(eyes[1] - eyes[0]) / np.linalg.norm(template[1] - template[0])
    assert 0.92 < distance < 1.08
    # unaligned, the 25-degree rotation is still there
    assert abs(eye_line_degrees(face.landmarks[0, :2].numpy())) > 20.0
