"""Whole published models (SPEC §10): FaceAUModel.from_pretrained on files written as the
published code writes them, against torchvision / timm and the dense heads holding the same
tensors; round trips; typed errors naming the file and the keys."""
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from pyg_mefl.testing.pairs import relative_error
from pyg_mefl.testing.published_models import (ReferenceModel, random_backbone_state,
                                               reference_head, save_hub_directory,
                                               save_training_checkpoint, whole_model_state)
from pyg_mefl import ANFL, BP4D_AUS, DISFA_AUS, MEFL, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS
from pyg_mefl import FaceAUModel

TOL = 1e-5
NAMES = {27: list(OPENGRAPHAU_MAIN_AUS) + list(OPENGRAPHAU_SUB_AUS), 12: list(BP4D_AUS),
         8: list(DISFA_AUS)}
# (backbone, layout, stage, main AUs, sub AUs, how the file is written)
CASES = [
    ("resnet18", "opengraphau", 2, 27, 14, "training"),
    ("resnet18", "me-graphau", 2, 12, 0, "training"),
    ("resnet18", "mexca", 2, 27, 14, "hub-safetensors"),
    ("resnet50", "mexca", 2, 27, 14, "hub-bin"),  # mexca's default hub model
    ("resnet18", "opengraphau", 1, 27, 14, "training"),
    ("resnet18", "me-graphau", 1, 8, 0, "bare"),
    ("resnet18", "mexca", 1, 27, 14, "bare"),
]


def _head_channels(backbone):
    return {"swin_tiny": 384, "resnet50": 512}.get(backbone, 128)  # C_backbone / 2 or / 4


def _published(backbone, layout, stage, num_aus, num_sub, seed):
    """(reference model, published whole-model state dict)."""
    channels = _head_channels(backbone)
    head = reference_head(stage, layout, channels, num_aus, num_sub, seed)
    trunk_state = random_backbone_state(backbone, seed)
    reference = ReferenceModel(backbone, trunk_state, head, channels, seed)
    state = whole_model_state(trunk_state, reference.global_linear, head, stage, layout)
    return reference, state


def _write(state, how, tmp_path):
    if how.startswith("hub"):
        directory = tmp_path / "mefarg"
        save_hub_directory(state, directory, "model.safetensors" if how.endswith("safetensors")
                           else "pytorch_model.bin")
        return str(directory)
    path = tmp_path / "model.pth"
    if how == "training":
        save_training_checkpoint(state, path)
    else:
        torch.save(state, path)
    return path


def _images(size=224, batch=2, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_identical(actual, expected, layout=None):
    if layout == "me-graphau":  # the dense reference orders ME-GraphAU's GNN keys otherwise
        assert sorted(actual) == sorted(expected)
    else:
        assert list(actual) == list(expected)  # keys in the published order
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key


@pytest.mark.parametrize("backbone,layout,stage,num_aus,num_sub,how", CASES,
                         ids=[f"{c[0]}-{c[1]}-stage{c[2]}-{c[3]}-{c[5]}" for c in CASES])
def test_whole_model_matches_reference(backbone, layout, stage, num_aus, num_sub, how,
                                       tmp_path):
    reference, state = _published(backbone, layout, stage, num_aus, num_sub, seed=num_aus)
    model = FaceAUModel.from_pretrained(_write(state, how, tmp_path))

    assert (model.source, model.stage) == (layout, stage)
    assert isinstance(model.head, ANFL if stage == 1 else MEFL)
    assert model.au_names == NAMES[num_aus]
    assert model.backbone.trunk.name == backbone
    images = _images(224 if backbone == "resnet18" else 128)  # fewer tokens at C = 512
    reference.eval()
    probs = model.predict(images)
    assert model.training  # predict leaves the mode as it was
    with torch.no_grad():
        expected = reference(images)
    assert probs.shape == (2, num_aus + num_sub)
    assert relative_error(probs, expected) <= TOL

    # train mode (smaller images: 2x2 tokens): batch statistics, and the gradients through head,
    # global block and backbone
    reference.train()
    images = _images(size=64, seed=1)
    weights = torch.rand(2, num_aus + num_sub, generator=torch.Generator().manual_seed(1))
    probs = model.head(model.backbone(images))
    expected = reference(images)
    assert relative_error(probs, expected) <= TOL
    (probs * weights).sum().backward()
    (expected * weights).sum().backward()
    ours = dict(model.named_parameters())
    for name, theirs in (("backbone.trunk.conv1.weight", reference.trunk.model.conv1.weight),
                         ("backbone.trunk.layer4.1.bn2.weight",
                          reference.trunk.model.layer4[1].bn2.weight),
                         ("backbone.global_linear.lin.weight",
                          reference.global_linear.fc.weight),
                         ("head.main_sc", reference.head.main_sc)):
        assert relative_error(ours[name].grad, theirs.grad) <= 1e-4, name

    fresh = FaceAUModel.from_pretrained(state)  # the training step changed `model`
    _assert_identical(fresh.to_published_state_dict(layout), state, layout)


def test_swin_tiny_me_graphau_disfa_stage_2(tmp_path):
    reference, state = _published("swin_tiny", "me-graphau", 2, 8, 0, seed=5)
    model = FaceAUModel.from_pretrained(_write(state, "training", tmp_path), stage=2,
                                        backbone="swin_tiny")
    assert model.au_names == NAMES[8] and model.head.edge_head is not None
    assert model.head.in_channels == 384
    images = _images(batch=1)
    with torch.no_grad():
        expected = reference.eval()(images)
    assert relative_error(model.predict(images), expected) <= TOL
    saved = model.to_published_state_dict("me-graphau")
    _assert_identical(saved, state, "me-graphau")
    assert "backbone.layers.0.downsample.reduction.weight" in saved  # Microsoft's layout


@pytest.fixture(scope="module")
def opengraphau_r18():
    """An OpenGraphAU stage-2 ResNet-18 whole-model state dict."""
    return _published("resnet18", "opengraphau", 2, 27, 14, seed=7)[1]


def _save(state, tmp_path, name="model.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_convert_to_mexca_and_back(opengraphau_r18, tmp_path):
    model = FaceAUModel.from_pretrained(opengraphau_r18)
    mexca = model.to_published_state_dict("mexca")
    assert "linear_global.fc.weight" in mexca
    assert "head.main_node_linear_layers.0.fc.weight" in mexca
    save_hub_directory(mexca, tmp_path / "hub")
    again = FaceAUModel.from_pretrained(tmp_path / "hub")
    assert again.source == "mexca"
    _assert_identical(again.to_published_state_dict("opengraphau"), opengraphau_r18)
    head_only = model.to_published_state_dict("opengraphau", whole_model=False)
    assert list(head_only) == [k[len("head."):] for k in opengraphau_r18 if k.startswith("head.")]


def test_forced_architecture_mismatches_name_the_file(opengraphau_r18, tmp_path):
    path = _save(opengraphau_r18, tmp_path)
    with pytest.raises(ValueError, match=rf"{path}: backbone='resnet50' was asked for, but the "
                                         r"file holds a resnet18 backbone"):
        FaceAUModel.from_pretrained(path, backbone="resnet50")
    with pytest.raises(KeyError, match=rf"{path}: missing key 'main_node_linear_layers.0.fc."):
        FaceAUModel.from_pretrained(path, source="mexca")
    with pytest.raises(ValueError, match=rf"{path}: stage=1 was asked for, but the file holds a "
                                         r"stage-2 \(MEFL\) head \(keys such as "
                                         r"'head.edge_extractor"):
        FaceAUModel.from_pretrained(path, stage=1)


def test_stage_1_file_asked_as_stage_2(tmp_path):
    state = _published("resnet18", "opengraphau", 1, 27, 14, seed=8)[1]
    path = _save(state, tmp_path)
    with pytest.raises(ValueError, match=rf"{path}: stage=2 was asked for, but the file holds a "
                                         r"stage-1 \(ANFL\) head \(no 'head.edge_extractor.\*'"):
        FaceAUModel.from_pretrained(path, stage=2)


def test_missing_and_unexpected_keys_name_the_file(opengraphau_r18, tmp_path):
    no_backbone = OrderedDict((k, v) for k, v in opengraphau_r18.items()
                              if not k.startswith("backbone."))
    path = _save(no_backbone, tmp_path, "head.pth")
    with pytest.raises(KeyError, match=rf"{path}: not a whole model: no 'backbone.\*' keys"):
        FaceAUModel.from_pretrained(path)
    no_global = OrderedDict((k, v) for k, v in opengraphau_r18.items()
                            if not k.startswith("global_linear."))
    with pytest.raises(KeyError, match=r"no 'global_linear.\*' or 'linear_global.\*' keys"):
        FaceAUModel.from_pretrained(no_global)
    short = OrderedDict((k, v) for k, v in opengraphau_r18.items()
                        if k != "backbone.layer4.1.bn2.running_var")
    path = _save(short, tmp_path, "short.pth")
    with pytest.raises(KeyError, match=rf"{path}: missing key 'layer4.1.bn2.running_var' in the "
                                       r"resnet18 backbone \(keys under 'backbone.'\)"):
        FaceAUModel.from_pretrained(path)
    extra = OrderedDict(opengraphau_r18, **{"backbone.fc.weight": torch.zeros(1000, 512)})
    with pytest.raises(KeyError, match=r"unexpected key\(s\) in the resnet18 backbone.*"
                                       r"\['fc.weight'\]"):
        FaceAUModel.from_pretrained(extra)
    wrong = OrderedDict(opengraphau_r18)
    wrong["backbone.layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 3)
    with pytest.raises(ValueError, match=r"key 'layer2.0.conv1.weight' in the resnet18 backbone"
                                         r".*expected shape \[128, 64, 3, 3\]"):
        FaceAUModel.from_pretrained(wrong)
    narrow = OrderedDict(opengraphau_r18)
    narrow["global_linear.fc.weight"] = torch.zeros(128, 256)
    with pytest.raises(ValueError, match=r"global linear block maps 256 to 128 channels, the "
                                         r"resnet18 backbone gives 512"):
        FaceAUModel.from_pretrained(narrow)


def test_hub_directories_and_ids(opengraphau_r18, tmp_path, monkeypatch):
    mexca = FaceAUModel.from_pretrained(opengraphau_r18).to_published_state_dict("mexca")
    directory = tmp_path / "hub"
    save_hub_directory(mexca, directory)
    os.remove(directory / "config.json")
    with pytest.raises(FileNotFoundError, match=rf"{directory}: a model directory needs "
                                                r"config.json .*; missing config.json$"):
        FaceAUModel.from_pretrained(directory)
    save_hub_directory(mexca, directory, config={"n_main_aus": 12, "n_sub_aus": 14})
    with pytest.raises(ValueError, match=r"config.json says n_main_aus=12, the weights hold 27"):
        FaceAUModel.from_pretrained(directory)
    os.remove(directory / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"missing model.safetensors or pytorch_model.bin"):
        FaceAUModel.from_pretrained(directory)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nothing.pth"):
        FaceAUModel.from_pretrained(tmp_path / "nothing.pth")

    from huggingface_hub import constants  # read at import time: set here as the env would
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        FaceAUModel.from_pretrained("mexca/mefarg-open-graph-au-resnet50-stage-2")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("mexca/mefarg-open-graph-au-resnet50-stage-2: not a local file "
                              "or directory, and the Hugging Face hub is offline")


def _chw(image):
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()


def test_published_transforms():
    opengraphau = FaceAUModel.from_pretrained(
        _published("resnet18", "opengraphau", 2, 27, 14, seed=9)[1])
    pixels = torch.randint(0, 256, (300, 260, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    image = Image.fromarray(pixels.numpy())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    # Resize(256) on the shorter side (bilinear), CenterCrop(224), ToTensor, Normalize
    resized = image.resize((256, round(256 * 300 / 260)), Image.BILINEAR)
    top, left = round((resized.height - 224) / 2), round((resized.width - 224) / 2)
    crop = _chw(resized.crop((left, top, left + 224, top + 224)))
    expected = (crop / 255 - mean) / std
    out = opengraphau.transform(image)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, expected, atol=1e-5)

    # mexca: the 224x224 face crop, MTCNN's (x - 127.5) / 128, then ImageNet normalisation
    mexca = FaceAUModel.from_pretrained(opengraphau.to_published_state_dict("mexca"))
    standardised = (_chw(image.resize((224, 224), Image.BILINEAR)) - 127.5) / 128
    assert torch.allclose(mexca.transform(image), (standardised - mean) / std, atol=1e-5)

    with pytest.raises(ValueError, match=r"images: expected a tensor of shape \[B, 3, H, W\], "
                                         r"got \[3, 224, 224\]"):
        opengraphau.predict(out)


def test_training_a_published_model_on_face_graphs():
    """The loaded model still trains like any FaceAUModel (forward on a Batch with images)."""
    from torch_geometric.data import Batch
    from pyg_mefl import face_graph
    model = FaceAUModel.from_pretrained(_published("resnet18", "me-graphau", 2, 12, 0, 10)[1])
    images = _images(size=64)
    graphs = []
    for image in images:
        graph = face_graph(None, 12)
        graph.image = image.unsqueeze(0)
        graphs.append(graph)
    out = model(Batch.from_data_list(graphs))
    assert out.probs.shape == (2, 12) and out.edge_logits.shape[-1] == 4
    out.probs.sum().backward()
    assert model.backbone.trunk.conv1.weight.grad.abs().sum() > 0
