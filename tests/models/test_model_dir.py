"""pyg_mefl's model directory (config.json + model.safetensors): save -> load gives the same
model (parameters, buffers, outputs in train and eval mode), the config says what the test built,
loading is strict, push_to_hub uploads the two files, a hub cache of them loads by id, and a
model read from a directory converts back to the published layouts that can hold it."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from hub_cache import write_cache
from pyg_mefl.testing.pairs import randomize_batchnorms
from pyg_mefl.testing.published_models import (ReferenceModel, random_backbone_state,
                                               reference_head, whole_model_state)
from pyg_mefl import ANFL, MEFL, FaceAUModel, SmallCNN

pytest.importorskip("safetensors")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ["AU1", "AU2", "AU4", "AU6", "AU12", "L_AU1", "R_AU1"]


def _small_model(head="MEFL", seed=0):
    """SmallCNN (24 channels, 2 x 2 tokens) and a 5 + 2 AU head with options off their
    defaults, BatchNorm statistics random."""
    torch.manual_seed(seed)
    if head == "MEFL":
        au_head = MEFL(24, 5, 2, num_layers=3, residual="pre", edge_head=True, au_names=NAMES,
                       sub_au_sources=[0, 4], dropout=0.0)
    else:
        au_head = ANFL(24, 5, 2, neighbor_num=3, metric="cosine", au_names=NAMES,
                       sub_au_sources=[1, 3], dropout=0.0)
    model = FaceAUModel(au_head, SmallCNN(24, grid=2, width=8, num_stages=3))
    randomize_batchnorms(model, torch.Generator().manual_seed(seed + 1))
    return model


def _images(batch=3, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _run(model, images):
    return model.head(model.backbone(images))


def _assert_same_state(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key, value in state_a.items():
        assert value.dtype == state_b[key].dtype and torch.equal(value, state_b[key]), key


@pytest.mark.parametrize("head", ["MEFL", "ANFL"])
def test_round_trip_same_model_in_train_and_eval_mode(head, tmp_path):
    model = _small_model(head)
    model.save_pretrained(tmp_path / "run", thresholds=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                          training={"epochs": 3, "f1": {"AU1": 0.61}})
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json", "model.safetensors"]
    loaded = FaceAUModel.from_pretrained(tmp_path / "run")
    assert type(loaded.head) is type(model.head) and loaded.au_names == NAMES
    assert torch.equal(loaded.head.sub_au_sources, model.head.sub_au_sources)
    assert loaded.thresholds == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert loaded.stage == (2 if head == "MEFL" else 1) and loaded.source is None
    _assert_same_state(model, loaded)
    images = _images()
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(_run(model, images), _run(loaded, images))
    # train mode: batch statistics, and the running statistics they update, alike
    model.train(), loaded.train()
    with torch.no_grad():
        assert torch.equal(_run(model, images), _run(loaded, images))
    _assert_same_state(model, loaded)
    assert not torch.equal(model.backbone.features[1].running_mean,
                           _small_model(head).backbone.features[1].running_mean)


def test_the_config_says_what_was_built(tmp_path):
    """Field by field, against the arguments the test gave (not against the writer's code)."""
    model = _small_model("MEFL")
    model.head.afg.dropout.p = 0.25
    model.save_pretrained(tmp_path, training={"note": "test"})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format"] == "pyg_mefl.FaceAUModel" and config["format_version"] == 1
    assert config["pyg_mefl_version"] == "0.1.0"
    assert config["backbone"] == {"name": "cnn", "out_channels": 24, "grid": 2, "width": 8,
                                  "num_stages": 3}
    assert config["head"] == {"type": "MEFL", "in_channels": 24, "num_main_aus": 5,
                              "num_sub_aus": 2, "sub_au_sources": [0, 4], "dropout": 0.25,
                              "check_finite": True, "num_layers": 3, "residual": "pre",
                              "edge_head": True}
    assert config["au_names"] == NAMES
    assert config["thresholds"] == {name: 0.5 for name in NAMES}
    assert config["source"] is None and config["preprocessing"] is None
    assert config["dtype"] == "float32" and config["training"] == {"note": "test"}
    assert FaceAUModel.from_pretrained(tmp_path).head.afg.dropout.p == 0.25


def test_a_head_without_backbone_round_trips(tmp_path):
    torch.manual_seed(3)
    model = FaceAUModel(MEFL(16, 4, 0, au_names=["a", "b", "c", "d"])).eval()
    model.save_pretrained(tmp_path, thresholds={"a": 0.2, "b": 0.4, "c": 0.6, "d": 0.8})
    loaded = FaceAUModel.from_pretrained(str(tmp_path)).eval()
    assert loaded.backbone is None and loaded.thresholds == [0.2, 0.4, 0.6, 0.8]
    tokens = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.head(tokens), loaded.head(tokens))


# --- strict reading --------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    directory = tmp_path / "model"
    _small_model("MEFL").save_pretrained(directory)
    return directory


def _edit_config(directory, change):
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("change,field", [
    (lambda c: c["head"].pop("num_main_aus"), "'head.num_main_aus'"),
    (lambda c: c.pop("thresholds"), "'thresholds'"),
    (lambda c: c["backbone"].pop("grid"), "'backbone.grid'"),
    (lambda c: c.pop("training"), "'training'"),
])
def test_a_missing_field_names_it(saved, change, field):
    _edit_config(saved, change)
    with pytest.raises(ValueError, match=f"missing field.*{field}"):
        FaceAUModel.from_pretrained(saved)


def test_unknown_fields_and_wrong_types_name_the_field(saved):
    _edit_config(saved, lambda c: c["head"].update(num_heads=4))
    with pytest.raises(ValueError, match=r"unknown field.*'head\.num_heads'"):
        FaceAUModel.from_pretrained(saved)
    _edit_config(saved, lambda c: (c["head"].pop("num_heads"),
                                   c["head"].update(edge_head="yes")))
    with pytest.raises(ValueError, match=r"field 'head\.edge_head': expected bool, got \"yes\""):
        FaceAUModel.from_pretrained(saved)
    _edit_config(saved, lambda c: (c["head"].update(edge_head=True),
                                   c["thresholds"].update(AU1=1.5)))
    with pytest.raises(ValueError, match=r"thresholds: AU1: expected a probability in \[0, 1\]"):
        FaceAUModel.from_pretrained(saved)
    _edit_config(saved, lambda c: c.update(format_version=2))
    with pytest.raises(ValueError, match="format_version 2; this pyg_mefl reads version 1"):
        FaceAUModel.from_pretrained(saved)


def test_weights_that_do_not_match_the_config(saved):
    from safetensors.torch import load_file, save_file
    weights = str(saved / "model.safetensors")
    state = load_file(weights)
    save_file({**state, "head.extra": torch.zeros(2)}, weights)
    with pytest.raises(KeyError, match=r"missing keys \[\], unexpected keys \['head\.extra'\]"):
        FaceAUModel.from_pretrained(saved)
    save_file({k: v for k, v in state.items() if k != "head.main_sc"}, weights)
    with pytest.raises(KeyError, match=r"missing keys \['head\.main_sc'\]"):
        FaceAUModel.from_pretrained(saved)
    save_file({**state, "head.main_sc": torch.zeros(5, 23)}, weights)
    with pytest.raises(ValueError, match=r"key 'head\.main_sc': expected torch\.float32 of "
                                         r"shape \[5, 24\], got torch\.float32 of shape \[5, 23\]"):
        FaceAUModel.from_pretrained(saved)
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match="model.safetensors: missing"):
        FaceAUModel.from_pretrained(saved)


def test_options_that_contradict_the_directory(saved):
    with pytest.raises(ValueError, match="stage=1 was asked for, but the model directory holds "
                                         "stage 2"):
        FaceAUModel.from_pretrained(saved, stage=1)
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['neighbor_num'\]"):
        FaceAUModel.from_pretrained(saved, neighbor_num=3)


def test_a_directory_with_neither_config(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="needs config.json and one of"):
        FaceAUModel.from_pretrained(tmp_path)


def test_save_refuses_what_it_cannot_describe(tmp_path):
    model = _small_model("MEFL")
    with pytest.raises(ValueError, match="thresholds: expected 7 .* got 2"):
        model.save_pretrained(tmp_path, thresholds=[0.5, 0.5])
    with pytest.raises(TypeError, match="training: must be JSON data"):
        model.save_pretrained(tmp_path, training={"model": model})
    odd = FaceAUModel(model.head, torch.nn.Conv2d(3, 24, 3))
    with pytest.raises(ValueError, match="describes the backbones SmallCNN and ImageTokens"):
        odd.save_pretrained(tmp_path)
    assert not os.listdir(tmp_path)  # nothing written by the failed saves


# --- published models: preprocessing kept, converted back ----------------------------------

@pytest.fixture(scope="module")
def mexca_directory(tmp_path_factory):
    """A mexca model (ResNet-18 trunk, 27 + 14 AUs) read from its published state dict and saved
    as a pyg_mefl model directory; the published state dict."""
    head = reference_head(2, "mexca", 128, 27, 14, 5)
    trunk = random_backbone_state("resnet18", 5)
    reference = ReferenceModel("resnet18", trunk, head, 128, 5)
    state = whole_model_state(trunk, reference.global_linear, head, 2, "mexca")
    directory = tmp_path_factory.mktemp("ours") / "mexca-finetuned"
    FaceAUModel.from_pretrained(state).save_pretrained(directory, training={"epochs": 0})
    return directory, state


def test_a_published_model_keeps_its_source_and_preprocessing(mexca_directory):
    directory, _ = mexca_directory
    config = json.loads((directory / "config.json").read_text())
    assert config["source"] == "mexca"
    assert config["backbone"] == {"name": "resnet18", "global_linear": {
        "in_channels": 512, "out_channels": 128, "dropout": 0.0}}
    pre = config["preprocessing"]
    assert pre["resize"] == [224, 224] and pre["center_crop"] is None
    assert pre["image_size"] == 224 and pre["face_crop"] == "mexca"
    # MTCNN's (x - 127.5) / 128 then ImageNet's: one step of mean 0.5 + m 128/255, std s 128/255
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert pre["mean"] == pytest.approx([0.5 + m * 128 / 255 for m in imagenet[0]])
    assert pre["std"] == pytest.approx([s * 128 / 255 for s in imagenet[1]])
    model = FaceAUModel.from_pretrained(directory)
    assert model.source == "mexca" and model.stage == 2 and model.transform is not None


def test_edited_preprocessing_is_refused(mexca_directory, tmp_path):
    directory, _ = mexca_directory
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(directory):
        os.symlink(directory / name, copy / name)
    config = json.loads((directory / "config.json").read_text())
    config["preprocessing"]["mean"] = [0.5, 0.5, 0.5]
    os.remove(copy / "config.json")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"field 'preprocessing\.mean': mexca's preprocessing"):
        FaceAUModel.from_pretrained(copy)


def test_converts_back_to_the_layouts_that_hold_it(mexca_directory):
    directory, published = mexca_directory
    model = FaceAUModel.from_pretrained(directory)
    again = model.to_published_state_dict("mexca")
    assert list(again) == list(published)
    assert all(torch.equal(again[k], v) for k, v in published.items())
    images = _images(batch=2, size=224)
    expected = model.predict(images)
    opengraphau = FaceAUModel.from_pretrained(model.to_published_state_dict("opengraphau"))
    assert opengraphau.source == "opengraphau"
    assert torch.allclose(opengraphau.predict(images), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="layout 'me-graphau' cannot hold this model"):
        model.to_published_state_dict("me-graphau")


def test_what_no_published_layout_holds_says_why(tmp_path):
    _small_model("MEFL").save_pretrained(tmp_path / "odd")
    odd = FaceAUModel.from_pretrained(tmp_path / "odd")
    with pytest.raises(ValueError, match=r"cannot hold this model: it has num_layers=3 .*; sub "
                                         r"AUs"):
        odd.to_published_state_dict("me-graphau")
    # a BP4D-sized head fits ME-GraphAU's layout, the SmallCNN backbone no published one
    torch.manual_seed(2)
    FaceAUModel(MEFL(24, 12, 0, residual="pre", edge_head=True),
                SmallCNN(24, grid=2)).save_pretrained(tmp_path / "cnn")
    model = FaceAUModel.from_pretrained(tmp_path / "cnn")
    with pytest.raises(ValueError, match="whole_model=True needs a published backbone"):
        model.to_published_state_dict("me-graphau")
    head = MEFL.from_pretrained(model.to_published_state_dict("me-graphau", whole_model=False))
    tokens = torch.randn(2, 4, 24, generator=torch.Generator().manual_seed(0))
    model.eval(), head.eval()
    with torch.no_grad():
        assert torch.equal(head(tokens), model.head(tokens))


# --- push_to_hub, and loading it back from a hub cache --------------------------------------

class _StandInHub:
    """HfApi's create_repo and upload_folder, recording what they were given and the files."""

    def __init__(self, keep):
        self.calls, self.keep = [], keep

    def create_repo(self, api, repo_id, **options):
        self.calls.append(("create_repo", repo_id, options))

    def upload_folder(self, api, *, repo_id, folder_path, **options):
        self.calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))
        shutil.copytree(folder_path, self.keep)
        return "commit-info"


def test_push_to_hub_uploads_the_two_files_and_they_load_by_hub_id(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    stand_in = _StandInHub(tmp_path / "uploaded")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda api, repo_id, **kw: stand_in.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda api, **kw: stand_in.upload_folder(api, **kw))
    model = _small_model("ANFL")
    result = model.push_to_hub("someone/au-model", thresholds=0.3, private=True)
    assert result == "commit-info"
    assert stand_in.calls == [
        ("create_repo", "someone/au-model", {"repo_type": "model", "exist_ok": True,
                                             "private": True}),
        ("upload_folder", "someone/au-model", ["config.json", "model.safetensors"])]
    # the uploaded files, laid out as huggingface_hub caches them, load offline by the hub id
    cache = tmp_path / "hub"
    write_cache(str(cache), str(tmp_path / "uploaded"), "someone/au-model", "a" * 40)
    code = ("import sys, torch; from pyg_mefl import FaceAUModel; "
            "m = FaceAUModel.from_pretrained('someone/au-model'); "
            "torch.save({'state': m.state_dict(), 'thresholds': m.thresholds}, sys.argv[1])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"),
               PYTHONPATH=ROOT)
    out = tmp_path / "loaded.pt"
    done = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = torch.load(out, weights_only=True)
    assert loaded["thresholds"] == [0.3] * 7
    reference = model.state_dict()
    assert list(loaded["state"]) == list(reference)
    assert all(torch.equal(loaded["state"][k], v) for k, v in reference.items())
