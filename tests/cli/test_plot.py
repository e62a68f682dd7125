"""``python -m pyg_mefl plot``: predictions CSVs, written as ``predict`` writes them (its
``CSVWriter``), to PNGs read back: names, the heat maps' layout and pixels (white where a face is
absent), a photo's panels, and bad CSVs (exit status 2, one line)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyg_mefl.cli import main
from pyg_mefl.cli import plot
from pyg_mefl.cli.predict import LANDMARK_COLUMNS, LEADING_COLUMNS, CSVWriter
from pyg_mefl.faces.pipeline import FaceRow

ROOT = Path(__file__).resolve().parents[2]
AUS_8 = ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]
AUS_41 = ([f"AU{k}" for k in (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                              22, 23, 24, 25, 26, 27, 32, 38, 39)]
          + [f"AU{side}{k}" for k in (1, 2, 4, 6, 10, 12, 14) for side in "LR"])
WHITE = (255, 255, 255)


def face(input, frame, time, face_id, probs, box=(10, 10, 50, 60), confidence=0.99):
    return FaceRow(input, frame, time, face_id, confidence, True, list(box),
                   [20.0, 30, 40, 30, 30, 40, 22, 50, 38, 50], list(probs))


def write_csv(path, au_names, rows, sidecar=None):
    """``rows`` through ``predict``'s own writer; the sidecar ``<path>.json`` if given."""
    with open(path, "w", newline="") as stream:
        writer = CSVWriter(stream, au_names)
        for row in rows:
            writer.write(row)
    if sidecar is not None:
        Path(str(path) + ".json").write_text(json.dumps(sidecar))
    return path


def video_rows(name, au_names, frames, faces, absent=lambda face_id, frame: False, fps=30.0,
               value=lambda face_id, frame, k: 0.2):
    """Every frame of a video at ``frame / fps`` s; faces ``0 .. faces - 1`` unless ``absent``;
    a frame without any face is a ``success`` 0 row."""
    for frame in range(frames):
        time = frame / fps
        present = [f for f in range(faces) if not absent(f, frame)]
        if not present:
            yield FaceRow(name, frame, time)
        for f in present:
            yield face(name, frame, time, f, [value(f, frame, k) for k in range(len(au_names))])


def run_plot(*args):
    return main(["plot", *map(str, args), "--quiet"])


def read(path):
    with open(path, newline="") as stream:
        return plot.read_predictions(stream)


def figure_of(csv_path, threshold=0.5, **kwargs):
    au_names, inputs = read(csv_path)
    (name, rows), = inputs.items()
    return plot.video_figure(plot.video_plot(name, au_names, rows, **kwargs), threshold)


def panels(figure):
    return [ax for ax in figure.axes if ax.get_label().startswith("face ")
            and not ax.get_label().endswith("crop")]


def pixel(png, figure, ax, x, y):
    """The PNG's colour at data point ``(x, y)`` of ``ax`` (``figure`` drawn at the PNG's dpi)."""
    figure.canvas.draw()
    px, py = ax.transData.transform((x, y))
    height = png.shape[0]
    return tuple(int(c) for c in png[int(round(height - py)), int(round(px))][:3])


def load_png(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------------------------

def test_png_names_from_stems_unique():
    names = plot.png_names(["clips/talk.mov", "photos/talk.jpg", "talk_1.jpg", "x/TALK.png"])
    assert names == {"clips/talk.mov": "talk.png", "photos/talk.jpg": "talk_1.png",
                     "talk_1.jpg": "talk_1_1.png", "x/TALK.png": "TALK_2.png"}


def test_time_edges_are_midpoints_of_irregular_frames():
    np.testing.assert_allclose(plot.time_edges(np.array([0.0, 1.0, 3.0])),
                               [-0.5, 0.5, 2.0, 4.0])
    np.testing.assert_allclose(plot.time_edges(np.array([2.0]), 0.25), [1.75, 2.25])


def test_video_heat_map_blank_where_the_face_is_absent(tmp_path):
    """Face 1 leaves during frames 10-19 of 30 (frames 0-2 have no face at all): its panel is
    white there and coloured (probability 0 is not white) where it is in the frame; the time
    axis is the panels' common one and covers every frame."""
    path = write_csv(tmp_path / "talk.csv", AUS_8, video_rows(
        "clips/talk.mov", AUS_8, 30, 2, absent=lambda f, n: n < 3 or (f == 1 and 10 <= n < 20),
        value=lambda f, n, k: 0.0 if f == 1 else 0.2))
    assert run_plot(path, "--out", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["talk.png"]
    png = load_png(tmp_path / "out" / "talk.png")
    figure = figure_of(path)
    assert figure.canvas.get_width_height()[::-1] == png.shape[:2]
    face0, face1 = panels(figure)
    assert face0.get_title(loc="left").startswith("face 0")
    assert face1.get_title(loc="left").startswith("face 1")
    assert face0.get_xlim() == face1.get_xlim()
    left, right = face0.get_xlim()
    assert left < 0 and right > 29 / 30  # every frame, also those without a face
    assert face1.get_xlabel() == "time (s)"
    assert [t.get_text() for t in face1.get_yticklabels()] == AUS_8
    absent = [pixel(png, figure, face1, n / 30, row) for n in (12, 15, 18) for row in (1, 6)]
    present = [pixel(png, figure, face1, n / 30, row) for n in (5, 25) for row in (1, 6)]
    before = [pixel(png, figure, ax, 1 / 30, 3) for ax in (face0, face1)]
    assert set(absent) == {WHITE} and set(before) == {WHITE}
    assert WHITE not in present and len(set(present)) == 1  # all probability 0, one colour
    assert pixel(png, figure, face0, 15 / 30, 3) not in (WHITE, present[0])  # 0.2, not 0


def test_heat_map_grows_with_faces_and_aus(tmp_path):
    sizes = {}
    for aus in (AUS_8, AUS_41):
        for faces in (1, 2):
            path = write_csv(tmp_path / f"v{len(aus)}_{faces}.csv", aus,
                             video_rows("v.mp4", aus, 12, faces))
            figure = figure_of(path)
            assert len(panels(figure)) == faces
            for ax in panels(figure):  # every AU row labelled
                assert [t.get_text() for t in ax.get_yticklabels()] == aus
            assert run_plot(path, "--out", tmp_path / f"out{len(aus)}_{faces}") == 0
            sizes[len(aus), faces] = load_png(tmp_path / f"out{len(aus)}_{faces}" / "v.png").shape
    assert sizes[8, 2][0] > sizes[8, 1][0] and sizes[41, 2][0] > sizes[41, 1][0]
    assert sizes[41, 1][0] > sizes[8, 1][0] and sizes[41, 2][0] > sizes[8, 2][0]
    assert len({shape[1] for shape in sizes.values()}) == 1  # the width does not change


def test_irregular_frames_drawn_on_their_own_times(tmp_path):
    """Frames at 0, 0.1, 1.0 and 1.1 s: the cell of frame 1 spans 0.05 to 0.55 s."""
    rows = [face("v.mp4", n, t, 0, [0.9 if n == 1 else 0.1] * 8)
            for n, t in enumerate((0.0, 0.1, 1.0, 1.1))]
    path = write_csv(tmp_path / "v.csv", AUS_8, rows)
    au_names, inputs = read(path)
    video = plot.video_plot("v.mp4", au_names, inputs["v.mp4"])
    np.testing.assert_allclose(video.edges, [-0.05, 0.05, 0.55, 1.05, 1.15])
    figure = plot.video_figure(video, 0.5)
    assert run_plot(path, "--out", tmp_path / "out") == 0
    png = load_png(tmp_path / "out" / "v.png")
    ax, = panels(figure)
    high, low = pixel(png, figure, ax, 0.5, 4.5), pixel(png, figure, ax, 0.6, 4.5)
    assert high == pixel(png, figure, ax, 0.1, 4.5) and high != low != WHITE
    outline, = ax.collections[1:]  # the cells at or above the threshold: frame 1's column
    (x0, y0), (x1, y1) = outline.get_paths()[0].get_extents().get_points()
    np.testing.assert_allclose([x0, x1, y0, y1], [0.05, 0.55, -0.5, 7.5], atol=2e-3)
    for x in (0.05, 0.55):  # the outline's colour, more red than viridis ever is
        red, green, blue = pixel(png, figure, ax, x, 4.5)
        assert red > green + 40 and red > blue + 40


def test_long_video_averaged_into_bins(tmp_path):
    """5000 frames: at most MAX_TIME_BINS columns, each the mean over the frames the face is in;
    a bin where it is in no frame is NaN."""
    frames = 5000
    path = write_csv(tmp_path / "long.csv", AUS_8, video_rows(
        "long.mp4", AUS_8, frames, 1, absent=lambda f, n: 2000 <= n < 2100,
        value=lambda f, n, k: (n % 2) * 0.5 + k / 100))
    au_names, inputs = read(path)
    rows = inputs["long.mp4"]
    assert rows.probs.dtype == np.float32 and rows.probs.shape == (frames, 8)
    video = plot.video_plot("long.mp4", au_names, rows)
    bins = video.probs.shape[1]
    assert bins <= plot.MAX_TIME_BINS and video.edges.shape == (bins + 1,)
    np.testing.assert_allclose(video.edges[[0, -1]], [-0.5 / 30, (frames - 0.5) / 30],
                               atol=1e-5)  # 6 decimals in the CSV
    middle = video.probs[0, np.flatnonzero(video.edges[:-1] > 2010 / 30)[0]]
    assert np.isnan(middle).all()
    first = video.probs[0, 0]  # frames 0-2 or so: about 0.25 on average, + k / 100
    assert np.all(np.abs(first - (np.arange(8) / 100 + 0.25)) < 0.1)
    ax, = panels(plot.video_figure(video, 0.5))
    assert len(ax.collections) == 1  # columns under 3 px are not outlined: the mesh only
    assert run_plot(path, "--out", tmp_path / "out") == 0
    assert load_png(tmp_path / "out" / "long.png").shape[1] == 1100


def write_photo(path, size=(200, 120)):
    pixels = np.zeros(size[::-1] + (3,), np.uint8)
    pixels[:, :, 0] = np.arange(size[0]) % 256
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("exists", [True, False])
def test_photo_one_panel_per_face(tmp_path, exists):
    photo = tmp_path / "group.png"  # lossless: its pixels are checked
    if exists:
        write_photo(photo)
    rows = [face(str(photo), 0, 0.0, f, np.linspace(0.9, 0.05, 8) - f / 50,
                 box=(10 + 60 * f, 10, 60 + 60 * f, 80), confidence=0.9 + f / 100)
            for f in (2, 0, 1)]  # out of order in the CSV: drawn in face_id order
    path = write_csv(tmp_path / "p.csv", AUS_8, rows)
    assert run_plot(path, "--out", tmp_path / "out") == 0
    png = load_png(tmp_path / "out" / "group.png")
    au_names, inputs = read(path)
    figure = plot.photo_figure(plot.photo_plot(str(photo), au_names, inputs[str(photo)]), 0.5)
    assert figure.canvas.get_width_height()[::-1] == png.shape[:2]
    bars = panels(figure)
    assert [ax.get_title() for ax in bars] == [f"face {f}, confidence {0.9 + f / 100:.3f}"
                                               for f in range(3)]
    assert [len(ax.patches) for ax in bars] == [8, 8, 8]
    assert [t.get_text() for t in bars[0].get_yticklabels()] == AUS_8  # most probable first
    crops = [ax for ax in figure.axes if ax.get_label().endswith("crop")]
    assert len(crops) == (3 if exists else 0)
    if exists:
        shown = [ax.get_images()[0].get_array() for ax in crops]
        assert [a.shape for a in shown] == [(70, 50, 3)] * 3
        assert [int(a[0, 0, 0]) for a in shown] == [10, 70, 130]  # face f's box, in order
        figure.canvas.draw()
        bottom = [ax.get_position().y1 for ax in bars]
        assert all(ax.get_position().y0 >= max(bottom) for ax in crops)  # crops above bars


def test_photo_without_a_face_still_drawn(tmp_path):
    path = write_csv(tmp_path / "p.csv", AUS_8, [FaceRow("empty.jpg", 0, 0.0)])
    assert run_plot(path, "--out", tmp_path / "out") == 0
    assert load_png(tmp_path / "out" / "empty.png").shape[0] > 50
    au_names, inputs = read(path)
    figure = plot.photo_figure(plot.photo_plot("empty.jpg", au_names, inputs["empty.jpg"]), 0.5)
    assert "no face found" in [text.get_text() for text in figure.texts]


def test_threshold_from_sidecar_then_option(tmp_path, monkeypatch):
    seen = []
    original = plot.photo_figure
    monkeypatch.setattr(plot, "photo_figure",
                        lambda p, threshold, base=None: seen.append(threshold)
                        or original(p, threshold, base))
    rows = [face("a.jpg", 0, 0.0, 0, [0.6] * 8)]
    plain = write_csv(tmp_path / "plain.csv", AUS_8, rows)
    sidecar = write_csv(tmp_path / "side.csv", AUS_8, rows, sidecar={"threshold": 0.8})
    assert run_plot(plain, "--out", tmp_path / "a") == 0
    assert run_plot(sidecar, "--out", tmp_path / "b") == 0
    assert run_plot(sidecar, "--out", tmp_path / "c", "--threshold", "0.3") == 0
    assert seen == [0.5, 0.8, 0.3]


def test_predict_csv_with_photo_and_videos_of_any_au_count(tmp_path):
    """Inputs in one CSV: a photo, a video recognised by its frames (.gif) and a one-frame
    video recognised by its extension; 12 AUs."""
    aus = [f"AU{k}" for k in range(1, 13)]
    rows = ([face("a/talk.mov", 0, 0.0, 0, [0.5] * 12)]
            + list(video_rows("b/talk.gif", aus, 5, 1))
            + [face("c/talk.jpg", 0, 0.0, 0, [0.7] * 12)])
    path = write_csv(tmp_path / "p.csv", aus, rows, sidecar={"videos": {"a/talk.mov": {
        "fps": 25.0}}})
    au_names, inputs = read(path)
    assert au_names == aus and list(inputs) == ["a/talk.mov", "b/talk.gif", "c/talk.jpg"]
    assert [plot.is_video(n, r) for n, r in inputs.items()] == [True, True, False]
    single = plot.video_plot("a/talk.mov", aus, inputs["a/talk.mov"], fps=25.0)
    np.testing.assert_allclose(single.edges, [-0.02, 0.02])
    assert run_plot(path, "--out", tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "talk.png", "talk_1.png", "talk_2.png"]


HEADER = ",".join(LEADING_COLUMNS + LANDMARK_COLUMNS + AUS_8)
GOOD = "a.jpg,0,0.000000,0,0.99,1,1,2,3,4," + ",".join(["1"] * 10) + "," + ",".join(["0.5"] * 8)
BAD_CSVS = {
    "missing": (None, "no such file"),
    "empty": ("", "empty file"),
    "renamed": (HEADER.replace("timestamp", "time") + "\n" + GOOD,
                "line 1: not a predictions CSV header: column 3 is 'time', expected 'timestamp'"),
    "no_aus": (",".join(LEADING_COLUMNS + LANDMARK_COLUMNS) + "\n", "line 1: no AU columns"),
    "short_header": ("input,frame\n", "line 1: not a predictions CSV header: 2 column(s)"),
    "probability": (HEADER + "\n" + GOOD + "\n" + GOOD[:-3] + "1.5",
                    "line 3: AU26 is '1.5', not a probability in [0, 1]"),
    "cells": (HEADER + "\n" + GOOD + ",0.1", "line 2: 29 cell(s), the header has 28"),
    "frame": (HEADER + "\n" + GOOD.replace("a.jpg,0,", "a.jpg,one,"),
              "line 2: frame is 'one', not a whole number"),
    "twice": (HEADER + "\n" + GOOD + "\n" + GOOD, "line 3: face 0 of frame 0 appears a second"),
    "header_only": (HEADER + "\n", "no rows after the header"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not text (UTF-8)"),
    "folder": ("folder", "a folder, not a predictions CSV"),
}
BAD_CSVS["word"] = (HEADER + "\n" + GOOD + "\n"
                    + GOOD.replace("a.jpg,0,0.000000,0,", "a.jpg,0,0.000000,1,")
                    .replace(",0.5,0.5,0.5,0.5,0.5", ",0.5,0.5,0.5,oops,0.5", 1),
                    "line 3: AU6 is 'oops', not a probability in [0, 1]")


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_exit_2_one_line(tmp_path, capsys, case):
    content, expected = BAD_CSVS[case]
    path = tmp_path / f"{case}.csv"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert run_plot(path, "--out", tmp_path / "out") == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"pyg_mefl plot: error: {path}: {expected}"), lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_broken_sidecar_warned_and_ignored(tmp_path, capsys):
    path = write_csv(tmp_path / "p.csv", AUS_8, [face("a.jpg", 0, 0.0, 0, [0.6] * 8)])
    Path(str(path) + ".json").write_text("{not json")
    assert run_plot(path, "--out", tmp_path / "out") == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "p.csv.json" in err[0]
    assert (tmp_path / "out" / "a.png").is_file()


def test_command_line_status_and_message(tmp_path):
    """The real ``python -m pyg_mefl plot`` on a bad value: status 2, one line, no traceback."""
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\n" + GOOD[:-3] + "abc\n")
    done = subprocess.run([sys.executable, "-m", "pyg_mefl", "plot", str(bad), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"pyg_mefl plot: error: {bad}: line 2: AU26 is 'abc', not a probability in [0, 1]"]


def test_per_au_thresholds_of_the_sidecar_decide_each_au(tmp_path, monkeypatch):
    """A model with thresholds of its own per AU (a fine-tuned model directory; ``predict``
    writes them into the sidecar): a photo's bars and a video's outlines follow each AU's
    threshold, and ``--threshold`` still sets one for all."""
    thresholds = dict(zip(AUS_8, [0.7, 0.5, 0.5, 0.65, 0.5, 0.5, 0.5, 0.55]))
    probs = [0.6] * 8
    expected = [p >= thresholds[au] for p, au in zip(probs, AUS_8)]
    sidecar = {"threshold": None, "thresholds": thresholds}
    figures, outlines = [], []
    original_photo, original_outline = plot.photo_figure, plot._outline
    monkeypatch.setattr(plot, "photo_figure", lambda *a: figures.append(original_photo(*a))
                        or figures[-1])
    monkeypatch.setattr(plot, "_outline", lambda ax, edges, mask: outlines.append(mask)
                        or original_outline(ax, edges, mask))
    photo = write_csv(tmp_path / "photo.csv", AUS_8, [face("a.jpg", 0, 0.0, 0, probs)],
                      sidecar=sidecar)
    assert run_plot(photo, "--out", tmp_path / "a") == 0
    ax, = panels(figures[-1])
    orange = [tuple(bar.get_facecolor()[:3]) == pytest.approx((1.0, 0.498, 0.055), abs=1e-3)
              for bar in ax.patches]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert dict(zip(names, orange)) == dict(zip(AUS_8, expected))
    assert "own threshold" in figures[-1]._suptitle.get_text()

    video = write_csv(tmp_path / "video.csv", AUS_8, video_rows(
        "talk.mov", AUS_8, 12, 1, value=lambda f, n, k: probs[k]), sidecar=sidecar)
    assert run_plot(video, "--out", tmp_path / "b") == 0
    assert outlines and outlines[-1].shape[0] == 8
    assert outlines[-1].all(axis=1).tolist() == expected
    assert run_plot(video, "--out", tmp_path / "c", "--threshold", "0.62") == 0
    assert outlines[-1].all(axis=1).tolist() == [p >= 0.62 for p in probs]


def test_sidecar_thresholds_that_miss_an_au_fall_back_to_the_common_one():
    aus = ["AU1", "AU2"]
    assert plot._sidecar_threshold({"thresholds": {"AU1": 0.3}, "threshold": 0.4}, aus) == 0.4
    assert plot._sidecar_threshold({"thresholds": {"AU1": 0.3, "AU2": 0.3}}, aus) == 0.3
    both = plot._sidecar_threshold({"thresholds": {"AU1": 0.3, "AU2": 0.6}}, aus)
    assert both.tolist() == [0.3, 0.6]
    assert plot._sidecar_threshold({"thresholds": {"AU1": 2, "AU2": 0.6}}, aus) is None
