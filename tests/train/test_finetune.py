"""Fine-tuning a whole model on labelled face photos: the labels CSV and its errors, the face
crops, masking, repeatability, exact resumes after SIGKILL and the model directory it writes."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pyg_mefl import MEFL, FaceAUModel
from pyg_mefl.data.label_csv import au_column_name, read_label_csv
from pyg_mefl.train.photo_dataset import mirrored_au_order
from pyg_mefl.models.backbones import SmallCNN
from pyg_mefl.train.finetune import FinetuneSettings, finetune, photo_dataset
from real_media import MULTI_FACE, NO_FACE, SAME_SIZE, media

pytest.importorskip("torchvision")
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_au.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
AUS = ["AU1", "AU2", "AU4", "AU12"]
HEADER = ["path", "split", "AU01_c", "AU2", "AU12_r", "frame"]
RUN = ["--photos-are-crops", "--epochs", "3", "--batch-size", "6", "--seed", "4"]


@pytest.fixture(scope="module")
def init_model(tmp_path_factory):
    """A small model directory (SmallCNN, MEFL over 4 AUs, OpenGraphAU's preprocessing)."""
    torch.manual_seed(0)
    model = FaceAUModel(MEFL(8, 4, num_sub_aus=0, au_names=AUS), SmallCNN(8, grid=2, width=4))
    model.source = "opengraphau"
    return model.save_pretrained(tmp_path_factory.mktemp("init") / "model")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """30 small face photos (real portraits, rotated) with labels that follow their pixels:
    AU1 = bright, AU2 = which person; AU4 has no column."""
    from PIL import Image
    folder = tmp_path_factory.mktemp("photos")
    faces = []
    for name in SAME_SIZE:
        with Image.open(media(name)) as image:
            faces.append(image.convert("RGB").resize((48, 48)))
    rows = []
    for number in range(30):
        face = faces[number % 4].rotate(number * 7 % 40 - 20)
        if number % 3 == 0:
            face = face.point(lambda value: min(255, value + 80))
        face.save(folder / f"p{number}.png")
        rows.append([f"p{number}.png", ("train", "train", "val", "train", "test")[number % 5],
                     int(number % 3 == 0), int(number % 4 < 2), "0.5", number])
    write_csv(folder / "labels.csv", HEADER, rows)
    return folder


def write_csv(path, header, rows):
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def edited_csv(photos, tmp_path, line, column, value):
    """The photos' labels CSV with one field changed (``line`` as an editor counts it)."""
    with open(photos / "labels.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    rows[line - 1][HEADER.index(column)] = value
    rows = [[str(photos / row[0]) if i and row[0] and not row[0].startswith("/") else row[0]]
            + row[1:] for i, row in enumerate(rows)]
    return write_csv(tmp_path / "labels.csv", rows[0], rows[1:])


# --- the labels CSV -------------------------------------------------------------------------

@pytest.mark.parametrize("column, expected", [
    ("AU12", ("AU12", False)), ("AU01", ("AU1", False)), ("AU12_c", ("AU12", False)),
    ("au06_C", ("AU6", False)), ("AU12_r", ("AU12", True)), ("AUL1", ("AUL1", False)),
    ("AUR014_c", ("AUR14", False)), ("frame", (None, False)), ("AU", (None, False)),
    ("AU12x", (None, False))])
def test_au_column_names_map_openface_and_pyfeat_onto_the_model_names(column, expected):
    assert au_column_name(column) == expected


def test_csv_rows_become_labels_over_the_model_aus_with_the_rest_unknown(photos):
    with pytest.warns(UserWarning, match=r"skipped column\(s\) \['AU12_r', 'frame'\]"):
        table = read_label_csv(photos / "labels.csv", AUS)
    with open(photos / "labels.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert table.paths == [str(photos / row["path"]) for row in rows]
    assert table.columns == {"AU1": "AU01_c", "AU2": "AU2"}
    expected = [[int(row["AU01_c"]), int(row["AU2"]), -1, -1] for row in rows]
    assert table.labels.tolist() == expected
    assert table.split.tolist() == [("train", "val", "test").index(row["split"]) for row in rows]
    assert table.lines == list(range(2, 32))


def test_empty_labels_are_unknown_and_decimals_read_as_labels(photos, tmp_path):
    path = edited_csv(photos, tmp_path, 2, "AU01_c", "")
    rows = list(csv.reader(open(path)))
    rows[2][HEADER.index("AU2")], rows[3][HEADER.index("AU2")] = "0.0", "-1"
    table = read_label_csv(write_csv(tmp_path / "decimal.csv", rows[0], rows[1:]), AUS)
    assert table.labels[0, 0] == -1 and table.labels[1, 1] == 0 and table.labels[2, 1] == -1


@pytest.mark.parametrize("line, column, value, error, message", [
    (5, "path", "missing.png", FileNotFoundError,
     r"labels.csv, line 5, column 'path': photo .*missing.png not found"),
    (7, "AU01_c", "2", ValueError,
     r"labels.csv, line 7, column 'AU01_c': label '2'; expected 1, 0, -1 or empty"),
    (4, "AU2", "yes", ValueError, r"line 4, column 'AU2': label 'yes'"),
    (9, "split", "holdout", ValueError, r"line 9, column 'split': 'holdout'; expected one of"),
])
def test_bad_rows_name_the_file_line_and_column(photos, tmp_path, line, column, value, error,
                                                message):
    with pytest.raises(error, match=message):
        read_label_csv(edited_csv(photos, tmp_path, line, column, value), AUS)


def test_an_unreadable_photo_names_its_line(photos, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match=r"line 3, column 'path': cannot read photo .*broken"):
        read_label_csv(edited_csv(photos, tmp_path, 3, "path", str(tmp_path / "broken.png")),
                       AUS)


def test_an_au_the_model_lacks_is_an_error_naming_it(photos, tmp_path):
    rows = list(csv.reader(open(photos / "labels.csv")))
    header = ["AU45_c" if name == "AU2" else name for name in rows[0]]
    with pytest.raises(KeyError, match=r"\['AU45_c'\] name AUs the model does not have"):
        read_label_csv(write_csv(photos / "other.csv", header, rows[1:]), AUS)
    header = ["AU1" if name == "AU2" else name for name in rows[0]]
    with pytest.raises(ValueError, match=r"columns 'AU01_c' and 'AU1' both label AU1"):
        read_label_csv(write_csv(photos / "other.csv", header, rows[1:]), AUS)


def test_a_split_without_positives_is_warned_about_by_column_and_split(photos, tmp_path):
    rows = list(csv.reader(open(photos / "labels.csv")))
    for row in rows[1:]:
        if row[1] == "val":
            row[2] = "0"
    with pytest.warns(UserWarning, match=r"labels_no_val.csv, column 'AU01_c': no positive "
                      r"label in the 'val' split \(6 photos\)"):
        read_label_csv(write_csv(photos / "labels_no_val.csv", rows[0], rows[1:]), AUS)


def test_mirrored_order_swaps_left_and_right_sub_aus_only():
    names = ["AU1", "AU2", "AUL1", "AUR1", "AUL2", "AUR4"]
    assert mirrored_au_order(names).tolist() == [0, 1, 3, 2, 4, 5]


# --- face crops ------------------------------------------------------------------------------

class CountingDetector:
    """The real detector, counting its calls."""

    def __init__(self):
        from pyg_mefl.faces import FaceDetector
        self.detector, self.calls = FaceDetector(), 0

    def settings(self):
        return self.detector.settings()

    def detect(self, frames):
        self.calls += 1
        return self.detector.detect(frames)


def test_photos_are_detected_once_and_several_or_no_faces_warned_about(tmp_path):
    pytest.importorskip("facenet_pytorch")
    from PIL import Image

    from pyg_mefl.train.photo_faces import FaceCropCache
    detector = CountingDetector()
    cache = FaceCropCache(tmp_path / "cache", detector=detector)
    photos = [str(media(MULTI_FACE)), str(media(NO_FACE))]
    for attempt in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            crops = cache.crops(photos, ["labels.csv, line 2", "labels.csv, line 3"])
        messages = [str(w.message) for w in caught]
        assert any("line 2" in m and "5 faces found: the largest is taken" in m
                   for m in messages), messages
        assert any("line 3" in m and "no face found: the photo is left out" in m
                   for m in messages)
    assert detector.calls == 2  # the second pass read the cache
    with Image.open(crops[0]) as crop, Image.open(photos[0]) as photo:
        assert crop.width == crop.height < photo.width / 4  # one face's square
    assert crops[1] is None


class FacelessPhotos:
    """A stand-in detector: no face in the given photos, one filling the frame in the others."""

    def __init__(self, faceless):
        from pyg_mefl.faces.detector import frame_tensor
        from PIL import Image
        self.faceless = [frame_tensor(Image.open(path).convert("RGB")) for path in faceless]

    def settings(self):
        return {"stand-in": len(self.faceless)}

    def detect(self, frames):
        from pyg_mefl.faces.detector import FrameFaces
        found = []
        for frame in frames.view(-1, *frames.shape[-3:]):  # [H, W, 3] frames
            none = any(frame.shape == other.shape and torch.equal(frame, other)
                       for other in self.faceless)
            height, width = frame.shape[:2]
            box = torch.zeros(0, 4) if none else torch.tensor([[0.0, 0.0, width, height]])
            found.append(FrameFaces(box, torch.ones(len(box)), torch.zeros(len(box), 5, 2)))
        return found


def test_photos_without_a_face_are_left_out_and_named(init_model, photos, tmp_path):
    from pyg_mefl.train.finetune import labelled_photos
    from pyg_mefl.train.photo_faces import FaceCropCache
    model = FaceAUModel.from_pretrained(str(init_model))
    faceless = {3: "train", 7: "val", 12: "val"}  # photo number: its split
    cache = FaceCropCache(tmp_path / "cache", detector=FacelessPhotos(
        [photos / f"p{number}.png" for number in faceless]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset, record = labelled_photos(model, str(photos / "labels.csv"), crop_cache=cache)
    messages = [str(w.message) for w in caught if "no face found" in str(w.message)]
    assert len(dataset) == 30 - 3 and record["photos_without_a_face"] == 3
    for number in faceless:  # photo p<n> is on line n + 2
        assert any(f"line {number + 2}:" in m and "left out" in m for m in messages), messages
    assert len(dataset.subset("val")) == 6 - 2 and len(dataset.subset("train")) == 18 - 1

    all_val = FaceCropCache(tmp_path / "cache2", detector=FacelessPhotos(
        [photos / f"p{number}.png" for number in range(2, 30, 5)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no photo in the 'val' split"):
            labelled_photos(model, str(photos / "labels.csv"), crop_cache=all_val)


# --- runs ------------------------------------------------------------------------------------

def _run(init_model, photos, out, *extra, settings=None):
    model = FaceAUModel.from_pretrained(str(init_model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = read_label_csv(photos / "labels.csv", model.au_names)
    dataset = photo_dataset(model, table.paths, table.labels, table.split, table.source)
    settings = settings or FinetuneSettings(epochs=2, batch_size=6, seed=4)
    return finetune(model, dataset, str(out), settings, log=lambda line: None)


def _without_timing(metrics):
    metrics = json.loads(json.dumps(metrics))
    metrics.pop("seconds")
    for stage in metrics["history"].values():
        for epoch in stage:
            epoch.pop("seconds")
    return metrics


@pytest.fixture(scope="module")
def first_run(init_model, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, _run(init_model, photos, out)


def test_same_seed_gives_identical_metrics_and_only_labelled_aus_count(first_run, init_model,
                                                                       photos, tmp_path):
    out, metrics = first_run
    assert _without_timing(_run(init_model, photos, tmp_path)) == _without_timing(metrics)
    assert metrics["labelled_aus"] == ["AU1", "AU2"]
    assert sorted(metrics["test"]["f1"]) == ["AU1", "AU2"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))


def test_the_model_directory_predicts_the_test_split_as_metrics_json_reports(first_run, photos):
    out, _ = first_run
    metrics = json.loads((out / "metrics.json").read_text())
    model = FaceAUModel.from_pretrained(str(out / "model")).eval()
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["training"]["test"] == metrics["test"]
    assert config["au_names"] == AUS and config["preprocessing"]["source"] == "opengraphau"
    from PIL import Image
    rows = [row for row in csv.DictReader(open(photos / "labels.csv")) if row["split"] == "test"]
    images = []
    for row in rows:
        with Image.open(photos / row["path"]) as image:
            images.append(model.transform(image.convert("RGB")))
    decided = model.predict(torch.stack(images)).numpy() >= np.array(model.thresholds)
    for au, column in (("AU1", "AU01_c"), ("AU2", "AU2")):
        truth = np.array([int(row[column]) for row in rows]) == 1
        mine = decided[:, AUS.index(au)]
        counts = {"tp": int((mine & truth).sum()), "fp": int((mine & ~truth).sum()),
                  "fn": int((~mine & truth).sum()), "tn": int((~mine & ~truth).sum())}
        assert counts == metrics["test"]["counts"][au]
        f1 = 200 * counts["tp"] / max(1, 2 * counts["tp"] + counts["fp"] + counts["fn"])
        assert f1 == pytest.approx(metrics["test"]["f1"][au], abs=1e-9)
        assert model.thresholds[AUS.index(au)] == pytest.approx(metrics["thresholds"][au])
    # the AUs the data lacks keep the starting model's thresholds
    assert model.thresholds[AUS.index("AU4")] == 0.5


def test_two_stage_recipe_trains_anfl_then_mefl_from_its_weights(init_model, photos, tmp_path):
    settings = FinetuneSettings(recipe="published-two-stage", epochs=1, batch_size=6, seed=4)
    metrics = _run(init_model, photos, tmp_path, settings=settings)
    assert sorted(metrics["history"]) == ["stage1", "stage2"]
    stage1 = torch.load(tmp_path / "stage1" / "best.pt", weights_only=True)["model"]
    stage2_start = FaceAUModel.from_pretrained(str(tmp_path / "model"))
    assert any(key.startswith("head.gnn.lin_u") for key in stage1)  # ANFL's layer
    assert "head.gem.lin_proj.weight" in stage2_start.state_dict()  # MEFL's
    assert set(os.listdir(tmp_path / "stage2")) >= {"checkpoint.pt", "best.pt"}


# --- the command line ------------------------------------------------------------------------

def _start(args):
    return subprocess.Popen([sys.executable, str(EXAMPLE)] + args, env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _cli(args):
    result = subprocess.run([sys.executable, str(EXAMPLE)] + args, env=ENV, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    return result


def test_sigkill_then_resume_gives_the_straight_run(init_model, photos, tmp_path):
    # five epochs: after the first epoch's checkpoint the run has several epochs and its test
    # left, so the kill lands inside the run however fast the machine is
    base = ["--init", str(init_model), "--labels", str(photos / "labels.csv")] + RUN + \
        ["--epochs", "5"]
    straight = tmp_path / "straight"
    assert _cli(base + ["--out", str(straight)]).returncode == 0
    killed = tmp_path / "killed"
    process = _start(base + ["--out", str(killed)])
    deadline = time.monotonic() + 240
    while not (killed / "checkpoint.pt").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it was killed"
    assert not (killed / "metrics.json").exists() and not (killed / "model").exists()
    result = _cli(base + ["--out", str(killed), "--resume", str(killed / "checkpoint.pt")])
    assert result.returncode == 0, result.stderr[-2000:]
    resumed, first = (json.loads((out / "metrics.json").read_text())
                      for out in (killed, straight))
    assert _without_timing(resumed) == _without_timing(first)
    a, b = (torch.load(out / "checkpoint.pt", weights_only=True)["model"]
            for out in (killed, straight))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_bad_input_stops_before_anything_is_written(init_model, photos, tmp_path):
    bad = edited_csv(photos, tmp_path, 6, "AU2", "3")
    out = tmp_path / "out"
    result = _cli(["--init", str(init_model), "--labels", str(bad), "--out", str(out)] + RUN)
    assert result.returncode == 2
    assert "line 6, column 'AU2': label '3'" in result.stderr
    assert not out.exists()
