"""The readers of ``predict``: which files are found, how image modes become RGB, which inputs are
refused and with what message, and how video frames are sampled."""
import numpy as np
import pytest
from PIL import Image

from media_files import blank_video_payload, damage_packet, face_like, truncate, write_video
from pyg_mefl.io.media import InputError, Source, collect_sources, read_image, read_video


def _source(path, kind="image"):
    return Source(str(path), kind, path.name)


def test_folders_are_searched_recursively_in_sorted_order_and_labels_are_unique(tmp_path):
    for rel in ("b.png", "a.png", "sub/c.PNG", "notes.txt", ".hidden/d.png", "sub/.e.png"):
        target = tmp_path / "faces" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.lower().endswith(".png"):
            face_like(0).save(target, format="PNG")
        else:
            target.write_bytes(b"x")
    face_like(1).save(tmp_path / "faces" / "a.jpg")
    other = tmp_path / "other" / "faces"
    other.mkdir(parents=True)
    face_like(2).save(other / "a.jpg")
    sources, problems = collect_sources([str(tmp_path / "faces"), str(other)])
    assert problems == []
    assert [s.path for s in sources] == [str(tmp_path / "faces" / r) for r in (
        "a.jpg", "a.png", "b.png", "sub/c.PNG")] + [str(other / "a.jpg")]
    # unique without their extension: drawn copies are written as <label stem>.jpg
    assert [s.label for s in sources] == ["faces/a.jpg", "faces/a_1.png", "faces/b.png",
                                          "faces/sub/c.PNG", "faces/a_2.jpg"]
    assert {s.kind for s in sources} == {"image"}


def test_missing_empty_and_unknown_inputs_are_problems_naming_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.dat").write_text("not a picture")
    face_like(0).save(tmp_path / "photo_without_extension", format="PNG")
    write_video(tmp_path / "clip.bin")  # a video recognised by its content
    sources, problems = collect_sources([str(tmp_path / p) for p in (
        "missing.jpg", "empty", "notes.dat", "photo_without_extension", "clip.bin")])
    messages = [str(p) for p in problems]
    assert messages[0] == f"{tmp_path / 'missing.jpg'}: no such file or folder"
    assert messages[1].startswith(f"{tmp_path / 'empty'}: folder has no image or video files")
    assert messages[2] == f"{tmp_path / 'notes.dat'}: not an image or video file (unknown format)"
    assert [(s.label, s.kind) for s in sources] == [("photo_without_extension", "image"),
                                                    ("clip.bin", "video")]


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "YCbCr"])
def test_eight_bit_modes_convert_as_the_published_loader(tmp_path, mode):
    original = face_like(3).convert(mode)
    path = tmp_path / ("face.jpg" if mode in ("CMYK", "YCbCr") else "face.png")
    original.save(path)
    frame = read_image(_source(path), min_size=32)
    with Image.open(path) as reference:  # the published pil_loader: open, convert("RGB")
        expected = np.asarray(reference.convert("RGB"))
    assert frame.image.mode == "RGB" and frame.warning is None
    np.testing.assert_array_equal(np.asarray(frame.image), expected)


def test_opaque_alpha_is_dropped_silently_and_transparency_warns(tmp_path):
    rgb = face_like(4)
    opaque, holes = rgb.convert("RGBA"), rgb.convert("RGBA")
    holes.putpixel((5, 5), (1, 2, 3, 0))
    opaque.save(tmp_path / "opaque.png")
    holes.save(tmp_path / "holes.png")
    first = read_image(_source(tmp_path / "opaque.png"), 32)
    second = read_image(_source(tmp_path / "holes.png"), 32)
    assert first.warning is None
    np.testing.assert_array_equal(np.asarray(first.image), np.asarray(rgb))
    assert "transparent pixels" in second.warning
    assert second.image.getpixel((5, 5)) == (1, 2, 3)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    levels = np.linspace(0, 65535, 40 * 40).round().astype(np.uint16).reshape(40, 40)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    frame = read_image(_source(tmp_path / "deep.png"), 32)
    expected = np.floor(levels.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    pixels = np.asarray(frame.image)
    assert frame.image.mode == "RGB" and pixels[..., 0].max() == 255 and pixels[..., 0].min() == 0
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)


def test_float_images_in_unit_range_are_scaled_and_others_refused(tmp_path):
    unit = np.linspace(0, 1, 36 * 36, dtype=np.float32).reshape(36, 36)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    Image.fromarray(unit * 300, mode="F").save(tmp_path / "wide.tif")
    frame = read_image(_source(tmp_path / "unit.tif"), 32)
    np.testing.assert_array_equal(np.asarray(frame.image)[..., 1], np.rint(unit * 255.0))
    with pytest.raises(InputError, match=r"wide\.tif: floating-point image with values in "
                                         r"\[0, 300\]; expected values in \[0, 1\]"):
        read_image(_source(tmp_path / "wide.tif"), 32)


def test_exif_orientation_is_applied(tmp_path):
    upright = face_like(5, size=(60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after turning 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif,
                                                      quality=100)
    frame = read_image(_source(tmp_path / "phone.jpg"), 32)
    assert frame.image.size == (60, 40)
    assert np.abs(np.asarray(frame.image, float) - np.asarray(upright, float)).mean() < 4


def test_damaged_and_tiny_images_raise_one_line_naming_the_file(tmp_path):
    face_like(6, size=(300, 300)).save(tmp_path / "full.jpg")
    truncate(tmp_path / "full.jpg", tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("hello")
    face_like(7, size=(20, 31)).save(tmp_path / "tiny.png")
    cases = {"cut.jpg": "cannot decode image: image file is truncated",
             "text.png": "not an image Pillow can read",
             "tiny.png": "image is 20x31 px; a face crop needs at least 32 px on each side"}
    for name, reason in cases.items():
        with pytest.raises(InputError) as info:
            read_image(_source(tmp_path / name), 32)
        assert str(info.value).startswith(f"{tmp_path / name}: {reason}")
        assert "\n" not in str(info.value)
    assert read_image(_source(tmp_path / "tiny.png"), 20).image.size == (20, 31)


def _levels(frames):
    return [int(np.asarray(f.image)[..., 0].mean().round()) for f in frames]


def test_video_frames_are_sampled_at_fps_with_their_index_and_time(tmp_path):
    video = write_video(tmp_path / "clip.mp4", num_frames=12, rate=10)
    problems = []
    every = list(read_video(_source(video, "video"), None, 32, problems))
    assert [f.index for f in every] == list(range(12))
    np.testing.assert_allclose([f.time for f in every], np.arange(12) / 10, atol=1e-9)
    # frame k is grey level 20 k: the decoded pixels are those frames, in order
    assert np.abs(np.array(_levels(every)) - 20 * np.arange(12)).max() <= 3
    sampled = list(read_video(_source(video, "video"), 2.5, 32, problems))
    assert [f.index for f in sampled] == [0, 4, 8]  # first frame at or after 0, 0.4, 0.8 s
    assert [f.index for f in read_video(_source(video, "video"), 100.0, 32, problems)] == \
        list(range(12))
    assert problems == []


def test_videos_without_decodable_frames_raise(tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    cases = {blank_video_payload(video, tmp_path / "blank.mp4"): "no decodable video frames",
             truncate(video, tmp_path / "cut.mp4"): "no video stream",
             write_video(tmp_path / "small.mp4", size=(24, 16)): "image is 24x16 px"}
    (tmp_path / "text.mp4").write_text("hello")
    cases[tmp_path / "text.mp4"] = "cannot open video"
    for path, reason in cases.items():
        with pytest.raises(InputError) as info:
            list(read_video(_source(path, "video"), None, 32, []))
        assert str(info.value).startswith(f"{path}: {reason}"), str(info.value)


def test_a_damaged_packet_loses_its_frame_and_is_reported_after_the_others(tmp_path):
    video = write_video(tmp_path / "clip.mp4", num_frames=12, rate=10)
    damaged = damage_packet(video, tmp_path / "damaged.mp4", 6)
    problems = []
    frames = list(read_video(_source(damaged, "video"), None, 32, problems))
    assert len(frames) == 11 and [f.index for f in frames] == list(range(11))
    levels = _levels(frames)
    assert np.abs(np.array(levels[:6]) - 20 * np.arange(6)).max() <= 3  # before the damage
    assert [str(p) for p in problems] == [
        f"{damaged}: 1 packet(s) could not be decoded (Invalid data found when processing "
        f"input); 11 frame(s) were read"]
