"""``python -m pyg_mefl export``: a model directory to an ONNX file whose onnxruntime
probabilities are the eager model's on real photos, for several batch sizes from one file; the
sidecar facts in its metadata; one-line errors and nothing written on bad input."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pyg_mefl.testing.published_models import (ReferenceModel, random_backbone_state,
                                               reference_head, whole_model_state)
from pyg_mefl import FaceAUModel, MEFL
from pyg_mefl.cli import main
from real_media import MULTI_FACE, SAME_SIZE, SINGLE_FACE, media

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("torchvision")
TOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the eager model, its config.json, the ONNX file): a mexca model (ResNet-18 trunk, 27 + 14
    AUs) saved as a model directory with per-AU thresholds, exported by the command."""
    head = reference_head(2, "mexca", 128, 27, 14, 5)
    trunk = random_backbone_state("resnet18", 5)
    reference = ReferenceModel("resnet18", trunk, head, 128, 5)
    state = whole_model_state(trunk, reference.global_linear, head, 2, "mexca")
    base = tmp_path_factory.mktemp("export")
    model = FaceAUModel.from_pretrained(state)
    thresholds = [round(0.3 + 0.01 * k, 2) for k in range(len(model.au_names))]
    model.save_pretrained(base / "model", thresholds=thresholds)
    out = base / "model.onnx"
    assert main(["export", str(base / "model"), "--format", "onnx", "--out", str(out)]) == 0
    config = json.loads((base / "model" / "config.json").read_text())
    return FaceAUModel.from_pretrained(base / "model").eval(), config, out


def _crops(model, names):
    images = []
    for name in names:
        with Image.open(media(name)) as image:
            images.append(model.transform(image.convert("RGB")))
    return torch.stack(images)


@pytest.mark.parametrize("names", [[SINGLE_FACE], [MULTI_FACE, SAME_SIZE[0], SAME_SIZE[3]]],
                         ids=["batch1", "batch3"])
def test_onnxruntime_gives_the_eager_probabilities_on_real_photos(exported, names):
    model, _, path = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    crops = _crops(model, names)
    probs, = session.run(None, {"images": crops.numpy()})
    expected = model.predict(crops)
    assert probs.shape == (len(names), 41) and probs.dtype == np.float32
    assert np.abs(probs - expected.numpy()).max() <= TOL
    assert expected.std() > 0.01  # not a constant output that any graph would match


def test_one_file_for_any_batch_and_the_metadata(exported):
    model, config, path = exported
    proto = onnx.load(str(path))
    (images,), (probs,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert images.name == "images" and isinstance(dims[0], str) and dims[1:] == [3, 224, 224]
    out_dims = [d.dim_param or d.dim_value for d in probs.type.tensor_type.shape.dim]
    assert probs.name == "probs" and out_dims == [dims[0], 41]
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["au_names"] == config["au_names"] == model.au_names
    assert meta["thresholds"] == list(config["thresholds"].values())
    assert meta["thresholds"][:3] == [0.3, 0.31, 0.32]
    assert meta["input_size"] == [3, 224, 224] and meta["source"] == "mexca"
    assert meta["mean"] == config["preprocessing"]["mean"]
    assert meta["std"] == config["preprocessing"]["std"]
    # the one (x - mean) / std of the metadata on 0-1 pixels is the model's own preprocessing
    with Image.open(media(SINGLE_FACE)) as image:
        image = image.convert("RGB").resize((224, 224), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(meta[k]).view(3, 1, 1) for k in ("mean", "std"))
    assert torch.allclose((pixels - mean) / std, model.transform(image), atol=1e-5)


def _one_error_line(capsys, start):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pyg_mefl export: error: {start}"), err
    return err


def test_bad_input_one_line_exit_2_nothing_written(exported, tmp_path, capsys):
    _, _, path = exported
    directory = str(path.parent / "model")
    out = tmp_path / "x.onnx"
    assert main(["export", directory, "--format", "torchscript", "--out", str(out)]) == 2
    _one_error_line(capsys, "--format torchscript: expected one of onnx")
    assert main(["export", directory, "--out", str(tmp_path / "missing" / "x.onnx")]) == 2
    _one_error_line(capsys, "--out ")
    assert main(["export", str(tmp_path / "nothing-here"), "--out", str(out)]) == 2
    _one_error_line(capsys, "")
    assert main(["export", directory, "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, f"--out {tmp_path}: is a folder")
    assert os.listdir(tmp_path) == []


def test_a_model_without_backbone_is_refused(tmp_path):
    from pyg_mefl.models.onnx_export import export_onnx
    with pytest.raises(ValueError, match="the model has no backbone"):
        export_onnx(FaceAUModel(MEFL(16, 4, 0)), tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == []
