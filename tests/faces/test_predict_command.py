"""``python -m pyg_mefl predict`` finds the faces by default: one CSV row per input, frame and
face, against mexca's own face pipeline (``face_reference``) on the same decoded frames; a frame
without a face is a row with success 0; bad files are one line each, the rest still written; the
sidecar records the run; ``--draw`` marks the faces."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import decoded_frames
from pyg_mefl.testing.face_reference import mexca_faces
from pyg_mefl.cli import main
from real_media import MULTI_FACE, NO_FACE, media

AU = 20
LEADING = ["input", "frame", "timestamp", "face_id", "confidence", "success",
           "x1", "y1", "x2", "y2"]


def _read(path):
    rows = list(csv.reader(path.open()))
    return rows[0], rows[1:]


def _check_rows(rows, expected_faces):
    """The CSV rows of one frame against mexca's faces in it."""
    if not expected_faces:
        assert len(rows) == 1 and rows[0][3:6] == ["", "", "0"]
        assert rows[0][6:] == [""] * (len(rows[0]) - 6)
        return
    assert len(rows) == len(expected_faces)
    for row, face in zip(rows, expected_faces):
        assert row[5] == "1"
        assert np.abs(np.array(row[6:10], float) - face.box).max() <= 1.0
        assert np.abs(np.array(row[10:AU], float) - face.landmarks.reshape(-1)).max() <= 1.0
        assert float(row[4]) == pytest.approx(face.score, abs=1e-5)
        assert np.abs(np.array(row[AU:], float) - face.probs).max() <= 1e-4


def test_photos_and_a_video_of_people(tmp_path, mexca_pair, photos, people_video, capsys):
    reference, model_dir = mexca_pair
    video, times = people_video
    (tmp_path / "damaged.jpg").write_bytes(media(MULTI_FACE).read_bytes()[:3000])
    out = tmp_path / "preds.csv"
    inputs = [media(MULTI_FACE), tmp_path / "damaged.jpg", media(NO_FACE), video]
    status = main(["predict", "--checkpoint", str(model_dir), "--out", str(out), "--quiet",
                   "--draw", str(tmp_path / "drawn"), *map(str, inputs)])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.count(f"error: {tmp_path / 'damaged.jpg'}: cannot decode image") == 1
    header, rows = _read(out)
    assert header[:10] == LEADING and len(header) == AU + 41
    by_frame = {}
    for row in rows:
        by_frame.setdefault((row[0], int(row[1])), []).append(row)
    assert list(by_frame) == [(str(media(MULTI_FACE)), 0), (str(media(NO_FACE)), 0)] + [
        (str(video), k) for k in range(len(times))]  # in input order, the damaged file left out
    for key, name in ((str(media(MULTI_FACE)), "multi"), (str(media(NO_FACE)), "none")):
        pixels = torch.from_numpy(np.array(photos[name]))[None]
        _check_rows(by_frame[(key, 0)], mexca_faces(pixels, reference)[0])
    frames, _ = decoded_frames(video)
    for number, faces in enumerate(mexca_faces(frames, reference)):
        _check_rows(by_frame[(str(video), number)], faces)
        assert float(by_frame[(str(video), number)][0][2]) == pytest.approx(times[number],
                                                                            abs=1e-3)
    record = json.loads((tmp_path / "preds.csv.json").read_text())
    assert record["source"] == "mexca" and record["stage"] == 2 and record["faces"] == "detect"
    assert record["detector"]["min_face_size"] == 20
    assert record["detector"]["thresholds"] == [0.6, 0.7, 0.7]
    assert record["au_names"] == header[AU:]
    assert record["videos"][str(video)]["frames"] == len(times)
    assert record["versions"]["facenet-pytorch"] == "2.5.3"
    # the drawn group photo: the faces' boxes are marked, the rest of the photo is the photo
    drawn = np.asarray(Image.open(tmp_path / "drawn" / f"{media(MULTI_FACE).stem}.jpg"), float)
    photo = np.asarray(photos["multi"], float)
    first = [float(v) for v in by_frame[(str(media(MULTI_FACE)), 0)][0][6:10]]
    x1, y1 = round(first[0]), round(first[1] + 10)
    assert np.abs(drawn[y1, x1 - 1:x1 + 2] - photo[y1, x1 - 1:x1 + 2]).max() > 60  # the box line
    assert np.abs(drawn[:photo.shape[0], :photo.shape[1]] - photo).mean() < 8
    # the drawn video: as many frames as the input at its times, same size, the faces marked
    import av
    with av.open(str(tmp_path / "drawn" / "people.mp4")) as container:
        drawn_frames = [(f.to_ndarray(format="rgb24"), float(f.time))
                        for f in container.decode(video=0)]
    assert [t for _, t in drawn_frames] == pytest.approx(times, abs=1e-3)
    assert drawn_frames[0][0].shape == frames[0].shape
    box = [round(float(v)) for v in by_frame[(str(video), 0)][0][6:10]]
    edge = (slice(box[1] + 5, box[3] - 5), box[0])  # the box's left edge, on the box's line
    assert np.abs(drawn_frames[0][0][edge].astype(float) - frames[0].numpy()[edge]).mean() > 40
    landscape = 6  # no face: the frame is the input's but for its "no face found" label
    assert np.abs(drawn_frames[landscape][0][100:].astype(float)
                  - frames[landscape].numpy()[100:]).mean() < 6


def test_a_photo_without_a_face_is_a_row_with_success_0_and_status_0(tmp_path, mexca_pair):
    out = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", str(mexca_pair[1]), "--out", str(out), "--quiet",
                 str(media(NO_FACE))]) == 0
    _, rows = _read(out)
    assert len(rows) == 1 and rows[0][:6] == [str(media(NO_FACE)), "0", "0.000000", "", "", "0"]


def test_a_very_large_photo_is_detected(tmp_path, mexca_pair, photos):
    """A 6000 x 4000 photo: detection at full resolution (the pyramid's first level is
    3600 x 2400), the faces where the smaller copy has them, scaled."""
    big = photos["multi"].resize((6000, 4000), Image.BILINEAR)
    big.save(tmp_path / "big.jpg", quality=95)
    out = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", str(mexca_pair[1]), "--out", str(out), "--quiet",
                 str(tmp_path / "big.jpg")]) == 0
    _, rows = _read(out)
    assert len(rows) >= 5 and all(r[5] == "1" for r in rows)
    widths = [float(r[8]) - float(r[6]) for r in rows]
    # largest first: the group's five faces, 6x the size they have in the 1000 px photo
    assert min(widths[:5]) > 300


def test_torchrun_processes_write_the_rows_of_one_process(tmp_path, mexca_pair, people_video):
    """Two processes under torchrun split the inputs (file k to process k mod 2) and write one
    CSV: the rows of a one-process run, in input order."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    inputs = [str(media(MULTI_FACE)), str(people_video[0]), str(tmp_path / "broken.png"),
              str(media(NO_FACE))]
    common = ["predict", "--checkpoint", str(mexca_pair[1]), "--quiet", *inputs]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    root = Path(__file__).resolve().parents[2]
    one = subprocess.run([sys.executable, "-m", "pyg_mefl", *common, "--out",
                          str(tmp_path / "one.csv")], capture_output=True, text=True, env=env,
                         cwd=root, timeout=600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "pyg_mefl"]
    two = subprocess.run(torchrun + common + ["--out", str(tmp_path / "two.csv")],
                         capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert one.returncode == 1 and two.returncode != 0  # the broken file, in both runs
    # one line when met, once more in process 0's summary (torchrun then reports the status
    # of process 0 in its own words); no traceback of pyg_mefl's
    assert two.stderr.count("broken.png: not an image Pillow can read") == 2
    assert "1 input(s) failed:" in two.stderr and "pyg_mefl/cli" not in two.stderr
    _, one_rows = _read(tmp_path / "one.csv")
    header, two_rows = _read(tmp_path / "two.csv")
    assert [r[:10] for r in two_rows] == [r[:10] for r in one_rows]
    assert np.abs(np.array([r[AU:] for r in two_rows if r[5] == "1"], float)
                  - np.array([r[AU:] for r in one_rows if r[5] == "1"], float)).max() <= 2e-6
    assert sorted(p.name for p in tmp_path.iterdir() if "part" in p.name) == []
    record = json.loads((tmp_path / "two.csv.json").read_text())
    assert record["processes"] == 2
