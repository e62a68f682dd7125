"""``python -m pyg_mefl predict`` end to end on a whole-model checkpoint in OpenGraphAU's layout
(ResNet-18, stage 2, 27 + 14 AUs), against the model composed independently: torchvision's
ResNet-18 trunk, the dense global linear block and the dense MEFL of ``dense_reference``, fed
with images preprocessed as SPEC §10 says."""
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from media_files import face_like, truncate, write_video
from pyg_mefl.testing.dense_reference import DenseLinearBlock, DenseMEFL, to_layout, wrap
from pyg_mefl.cli import main
from pyg_mefl.cli.draw import MIN_HEIGHT, describe

torchvision = pytest.importorskip("torchvision")
ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AU = 20  # the AU columns follow 10 leading and 10 landmark columns


def _randomise_norms(module, generator):
    for bn in module.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.running_mean.normal_(0, 0.1, generator=generator)
            bn.running_var.uniform_(0.5, 1.5, generator=generator)
            bn.weight.data.uniform_(0.5, 1.5, generator=generator)
            bn.bias.data.normal_(0, 0.1, generator=generator)


class Reference(torch.nn.Module):
    """The published whole model, composed from torchvision and the dense reference."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(11)
        torch.manual_seed(11)
        self.resnet = torchvision.models.resnet18()
        self.global_linear = DenseLinearBlock(512, 128)
        self.head = DenseMEFL(128, 27, 14)
        _randomise_norms(self, generator)
        self.eval()

    def forward(self, images):
        r = self.resnet
        maps = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(images))))))))
        return self.head(self.global_linear(maps.flatten(2).transpose(1, 2)))["probs"]

    def checkpoint(self) -> dict:
        """The file OpenGraphAU's training script writes (DataParallel ``module.`` keys)."""
        backbone = {f"backbone.{k}": v for k, v in self.resnet.state_dict().items()
                    if not k.startswith("fc.")}
        state = to_layout(self.head.state_dict(), "opengraphau", whole_model=True,
                          global_linear=self.global_linear.state_dict(), backbone=backbone)
        return {"epoch": 7, **wrap(state, state_dict_wrapper=True, module_prefix=True),
                "optimizer": {}}


def mexca_directory(reference: Reference, folder: Path) -> Path:
    """The model as mexca's ``save_pretrained`` writes it: ``config.json`` and
    ``model.safetensors`` with keys ``backbone.*``, ``linear_global.*``, ``head.*``."""
    from safetensors.torch import save_file
    backbone = {f"backbone.{k}": v for k, v in reference.resnet.state_dict().items()
                if not k.startswith("fc.")}
    state = to_layout(reference.head.state_dict(), "mexca", whole_model=True,
                      global_linear=reference.global_linear.state_dict(), backbone=backbone)
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"n_main_aus": 27, "n_sub_aus": 14}')
    return folder


def preprocess_mexca(image: Image.Image) -> torch.Tensor:
    """mexca (SPEC §10): the crop at 224x224, MTCNN's (x - 127.5) / 128 on 0-255 pixels, then
    ImageNet Normalize."""
    pixels = np.asarray(image.resize((224, 224), Image.BILINEAR), dtype=np.float32)
    standardised = torch.from_numpy((pixels - 127.5) / 128)
    return ((standardised - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)


def preprocess(image: Image.Image) -> torch.Tensor:
    """SPEC §10: Resize(256) on the shorter side (bilinear), CenterCrop(224), ToTensor,
    ImageNet Normalize."""
    width, height = image.size
    size = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    resized = image.resize(size, Image.BILINEAR)
    left, top = round((size[0] - 224) / 2.0), round((size[1] - 224) / 2.0)
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    pixels = (torch.from_numpy(crop) - torch.tensor(MEAN)) / torch.tensor(STD)
    return pixels.permute(2, 0, 1)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    reference = Reference()
    path = tmp_path_factory.mktemp("model") / "OpenGraphAU-ResNet18_second_stage.pth"
    torch.save(reference.checkpoint(), path)
    return path, reference


def _read_csv(path_or_text):
    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) else path_or_text
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def _faces(folder: Path):
    folder.mkdir(parents=True)
    face_like(0, (80, 90)).save(folder / "a.jpg")
    face_like(1, (300, 201)).save(folder / "b.png")
    face_like(2, (64, 64)).convert("L").save(folder / "c_gray.png")
    face_like(3, (96, 70)).convert("RGBA").save(folder / "d_rgba.png")
    return folder


def test_csv_equals_the_reference_model_on_images_and_video_frames(tmp_path, model_file):
    checkpoint, reference = model_file
    faces = _faces(tmp_path / "faces")
    video = write_video(tmp_path / "clip.mp4", num_frames=7, rate=10, size=(72, 56))
    out = tmp_path / "preds.csv"
    status = main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), "--faces",
                   "whole", "--batch-size", "3", "--fps", "4", "--quiet", str(faces), str(video)])
    assert status == 0
    header, rows = _read_csv(out)
    from pyg_mefl.data.aus import OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS
    assert header[:AU] == ["input", "frame", "timestamp", "face_id", "confidence", "success",
                           "x1", "y1", "x2", "y2"] + [f"{p}_{a}" for p in (
                               "left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                                                      for a in "xy"]
    assert header[AU:] == list(OPENGRAPHAU_MAIN_AUS + OPENGRAPHAU_SUB_AUS)
    names = sorted(p.name for p in faces.iterdir())
    assert [r[0] for r in rows] == [str(faces / n) for n in names] + [str(video)] * 3
    assert [r[1:3] for r in rows[4:]] == [["0", "0.000000"], ["3", "0.300000"],
                                          ["5", "0.500000"]]
    assert [r[3:6] for r in rows] == [["0", "", "1"]] * 7  # whole images: one face each
    assert rows[0][6:10] == ["0.00", "0.00", "80.00", "90.00"] and rows[0][10:AU] == [""] * 10
    images = [Image.open(faces / n).convert("RGB") for n in names]
    import av
    with av.open(str(video)) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
    images += [frames[0], frames[3], frames[5]]
    with torch.no_grad():
        expected = reference(torch.stack([preprocess(image) for image in images]))
    got = torch.tensor([[float(v) for v in r[AU:]] for r in rows])
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    assert float(expected.std()) > 1e-3  # the faces differ: the comparison can fail


def test_bad_inputs_are_listed_and_the_good_ones_still_written(tmp_path, model_file, capsys):
    checkpoint, reference = model_file
    faces = _faces(tmp_path / "faces")
    truncate(faces / "b.png", faces / "b_cut.png", keep=0.6)
    (faces / "e_text.jpg").write_text("not an image")
    face_like(4, (12, 40)).save(faces / "f_tiny.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.mp4").write_bytes(b"\0" * 2048)
    out = tmp_path / "preds.csv"
    status = main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet",
                   "--faces", "whole", str(faces), str(tmp_path / "empty"),
                   str(tmp_path / "blank.mp4"),
                   str(tmp_path / "missing.png")])
    assert status == 1
    header, rows = _read_csv(out)
    good = ["a.jpg", "b.png", "c_gray.png", "d_rgba.png"]
    assert [r[0] for r in rows] == [str(faces / n) for n in good]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    summary = err.split("6 input(s) failed:\n")[1].splitlines()
    bad = {faces / "b_cut.png": "cannot decode image", faces / "e_text.jpg": "not an image",
           faces / "f_tiny.png": "image is 12x40 px", tmp_path / "empty": "folder has no image",
           tmp_path / "blank.mp4": "cannot open video",
           tmp_path / "missing.png": "no such file or folder"}
    assert len(summary) == len(bad)
    for path, reason in bad.items():
        assert sum(line.startswith(f"  {path}: {reason}") for line in summary) == 1, (path, err)
    with torch.no_grad():
        expected = reference(torch.stack([preprocess(Image.open(faces / n).convert("RGB"))
                                          for n in good]))
    assert header[1:3] == ["frame", "timestamp"]
    assert all(r[1:3] == ["0", "0.000000"] for r in rows)
    got = torch.tensor([[float(v) for v in r[AU:]] for r in rows])
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_draw_writes_each_face_with_its_active_aus(tmp_path, model_file):
    checkpoint, _ = model_file
    faces = _faces(tmp_path / "faces")
    status = main(["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p.csv"),
                   "--draw", str(tmp_path / "drawn"), "--quiet", "--faces", "whole",
                   str(faces / "a.jpg"),
                   str(faces / "b.png")])
    assert status == 0
    _, rows = _read_csv(tmp_path / "p.csv")
    for name, row in zip(("a", "b"), rows):
        drawn = Image.open(tmp_path / "drawn" / f"{name}.jpg")
        original = Image.open(faces / f"{name}{'.jpg' if name == 'a' else '.png'}")
        scale = max(1.0, MIN_HEIGHT / original.height)
        assert drawn.height == max(MIN_HEIGHT, original.height)
        assert drawn.width > round(original.width * scale)  # the panel on the right
        left = np.asarray(drawn.crop((0, 0, round(original.width * scale), drawn.height)), float)
        expected = np.asarray(original.convert("RGB").resize(
            (round(original.width * scale), drawn.height), Image.BILINEAR), float)
        assert np.abs(left - expected).mean() < 6  # the face itself, JPEG-compressed
        assert any(float(p) >= 0.5 for p in row[AU:])  # something to list in the panel
    assert describe("AU12") == "AU12 lip corner puller"
    assert describe("AUL12") == "AUL12 left lip corner puller"
    assert describe("AU#3") == "AU#3"


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pyg_mefl", "predict", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_exit_status_and_one_line_errors_from_a_fresh_process(tmp_path, model_file):
    checkpoint, _ = model_file
    faces = _faces(tmp_path / "faces")
    run = _run("--checkpoint", checkpoint, "--out", "-", "--faces", "whole", faces / "a.jpg")
    assert run.returncode == 0, run.stderr
    header, rows = _read_csv(run.stdout)
    assert header[0] == "input" and len(header) == AU + 41 and len(rows) == 1
    # a checkpoint of another architecture than the one forced: nothing runs, one line
    run = _run("--checkpoint", checkpoint, "--backbone", "resnet50", "--out",
               tmp_path / "x.csv", faces / "a.jpg")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pyg_mefl predict: error: {checkpoint}")
    assert "resnet50" in lines[0] and "resnet18" in lines[0]


def test_bad_options_stop_the_run_with_one_line_and_status_2(tmp_path, model_file, capsys):
    checkpoint, _ = model_file
    face = _faces(tmp_path / "faces") / "a.jpg"
    cases = {("--device", "gpu0"): "--device: expected a torch device such as cpu or cuda:0",
             ("--out", str(tmp_path / "no" / "such" / "dir.csv")):
                 f"--out {tmp_path / 'no' / 'such' / 'dir.csv'}: cannot write",
             ("--checkpoint", str(face)): f"{face}: "}
    for options, start in cases.items():
        argv = ["predict", "--checkpoint", str(checkpoint), "--quiet", *options, str(face)]
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pyg_mefl predict: error: {start}"), lines
    with pytest.raises(SystemExit) as info:
        main(["predict", "--checkpoint", str(checkpoint), "--batch-size", "0", str(face)])
    assert info.value.code == 2
    assert "--batch-size: expected a positive integer, got '0'" in capsys.readouterr().err


def test_progress_bar_counts_images_and_lets_error_lines_through(tmp_path, model_file, capsys):
    from pyg_mefl.io.media import collect_sources
    from pyg_mefl.cli.predict import CSVWriter, build_pipeline, load_model, predict_sources
    from pyg_mefl.cli.main import build_parser
    checkpoint, _ = model_file
    faces = _faces(tmp_path / "faces")
    (faces / "e_text.jpg").write_text("not an image")
    args = build_parser().parse_args(["predict", "--checkpoint", str(checkpoint), "--faces",
                                      "whole", "--batch-size", "2", str(faces)])
    model = load_model(args, torch.device("cpu"))
    sources, _ = collect_sources([str(faces)])
    out = io.StringIO()
    summary = predict_sources(build_pipeline(args, model), sources,
                              CSVWriter(out, model.au_names), progress=True)
    err = capsys.readouterr().err
    assert summary.frames == 4 and [str(p) for p in summary.problems] == [
        f"{faces / 'e_text.jpg'}: not an image Pillow can read (unknown or damaged format)"]
    assert f"error: {faces / 'e_text.jpg'}: not an image" in err
    assert "4/4" in err and "frame" in err  # the bar's final count, its total set to the frames
    assert len(out.getvalue().splitlines()) == 1 + 4


def test_mexca_directory_with_its_preprocessing_and_drawn_video_frames(tmp_path, model_file):
    _, reference = model_file
    model_dir = mexca_directory(reference, tmp_path / "mexca-model")
    faces = _faces(tmp_path / "faces")
    video = write_video(tmp_path / "clip.mp4", num_frames=6, rate=10, size=(72, 56))
    out = tmp_path / "preds.csv"
    status = main(["predict", "--checkpoint", str(model_dir), "--out", str(out), "--fps", "5",
                   "--faces", "whole", "--draw-frames", "--draw", str(tmp_path / "drawn"),
                   "--quiet", str(faces / "b.png"), str(video)])
    assert status == 0
    _, rows = _read_csv(out)
    assert [r[:2] for r in rows] == [[str(faces / "b.png"), "0"], [str(video), "0"],
                                     [str(video), "2"], [str(video), "4"]]
    import av
    with av.open(str(video)) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
    images = [Image.open(faces / "b.png").convert("RGB"), frames[0], frames[2], frames[4]]
    with torch.no_grad():
        expected = reference(torch.stack([preprocess_mexca(image) for image in images]))
        published = reference(torch.stack([preprocess(image) for image in images]))
    got = torch.tensor([[float(v) for v in r[AU:]] for r in rows])
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    assert (published - expected).abs().max() > 1e-3  # the two preprocessings differ
    drawn_dir = tmp_path / "drawn"
    drawn = sorted(str(p.relative_to(drawn_dir)) for p in drawn_dir.rglob("*.jpg"))
    assert drawn == ["b.jpg", "clip/frame_000000.jpg", "clip/frame_000002.jpg",
                     "clip/frame_000004.jpg"]


def test_the_panel_is_wide_enough_for_its_header():
    from PIL import ImageFont
    from pyg_mefl.cli.draw import draw_faces
    image = Image.new("RGB", (640, 480), (40, 90, 160))
    drawn = draw_faces(image, [], ["AU1"])  # no face: the panel says so under its header
    font = ImageFont.load_default(size=max(12, min(drawn.height // 32, 28)))
    header = ImageDraw.Draw(drawn).textlength("active AUs (p >= 0.5)", font=font)
    assert drawn.width - image.width >= header + font.size
    panel = np.asarray(drawn)[:, image.width:]
    assert (panel[:, -3:] == 24).all()  # a margin right of the longest text stays background


def test_a_model_directory_predicts_as_its_source_and_decides_by_its_thresholds(tmp_path,
                                                                                 model_file):
    from pyg_mefl import FaceAUModel
    checkpoint, _ = model_file
    model = FaceAUModel.from_pretrained(checkpoint)
    thresholds = [0.05 * (k % 20) for k in range(len(model.au_names))]
    model.save_pretrained(tmp_path / "ours", thresholds=thresholds, training={"epochs": 1})
    faces = _faces(tmp_path / "faces")
    for name, source in (("published.csv", checkpoint), ("ours.csv", tmp_path / "ours")):
        assert main(["predict", "--checkpoint", str(source), "--out", str(tmp_path / name),
                     "--faces", "whole", "--quiet", str(faces)]) == 0
    assert _read_csv(tmp_path / "ours.csv") == _read_csv(tmp_path / "published.csv")
    record = json.loads((tmp_path / "ours.csv.json").read_text())
    assert record["source"] == "opengraphau" and record["threshold"] is None
    assert list(record["thresholds"].values()) == pytest.approx(thresholds)
    assert list(record["thresholds"]) == model.au_names
    published = json.loads((tmp_path / "published.csv.json").read_text())
    assert published["threshold"] == 0.5 and set(published["thresholds"].values()) == {0.5}


def test_drawn_active_aus_use_each_aus_threshold():
    from pyg_mefl.cli.draw import _active_lines
    lines = _active_lines(["AU1", "AU2", "AU4"], [0.6, 0.6, 0.2], [0.5, 0.7, 0.1])
    assert [text.split()[0] for text, _, _ in lines] == ["AU1", "AU4"]
    assert [text.split()[0] for text, _, _ in _active_lines(["AU1", "AU2"], [0.6, 0.4], 0.5)] \
        == ["AU1"]
