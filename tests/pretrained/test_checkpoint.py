"""Published checkpoints (SPEC §8): strict loading, exact outputs, save back, typed errors."""
import logging
import os
import pathlib
import re
from collections import OrderedDict

import pytest
import torch

from pyg_mefl.testing.dense_reference import DenseLinearBlock, DenseMEFL, to_layout, wrap
from pyg_mefl.testing.pairs import randomize_batchnorms, relative_error
from pyg_mefl import BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS, LinearBlock
from pyg_mefl import MEFL
from pyg_mefl.pretrained import CheckpointParts

TOL = 1e-5
C, C_IN, D, B = 16, 12, 5, 3  # head width, backbone width (before the global linear), tokens, faces
CASES = [  # (layout, num_main_aus, num_sub_aus)
    ("mexca", 27, 14),
    ("opengraphau", 27, 14),
    ("me-graphau", 12, 0),
    ("me-graphau", 8, 0),
]
CASE_IDS = [f"{layout}-{n}" for layout, n, _ in CASES]
VARIANTS = ["head", "whole", "wrapped-head", "wrapped-module-whole"]
NAMES = {27: list(OPENGRAPHAU_MAIN_AUS) + list(OPENGRAPHAU_SUB_AUS), 12: list(BP4D_AUS),
         8: list(DISFA_AUS)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tiny models run fastest on one thread, also on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _backbone():
    generator = torch.Generator().manual_seed(123)
    return OrderedDict([
        ("backbone.conv1.weight", torch.randn(4, 3, 3, 3, generator=generator)),
        ("backbone.bn1.running_mean", torch.randn(4, generator=generator)),
        ("backbone.bn1.num_batches_tracked", torch.tensor(17)),
        ("backbone.layer1.0.conv1.weight", torch.randn(4, 4, 1, 1, generator=generator)),
    ])


def _reference(layout, num_aus, num_sub, seed=0, dtype=torch.float32):
    """A dense reference head and global linear block with random BN statistics and counters."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    me_graphau = layout == "me-graphau"
    dense = DenseMEFL(C, num_aus, num_sub, residual="pre" if me_graphau else "post",
                      edge_head=me_graphau)
    global_linear = DenseLinearBlock(C_IN, C)
    for module in (dense, global_linear):
        randomize_batchnorms(module, generator)
        for bn in module.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))
    return dense.to(dtype), global_linear.to(dtype)


def _checkpoint(dense, global_linear, layout, whole_model):
    """The published state dict (fresh tensors, so the reference's training cannot alter it)."""
    state = to_layout(dense.state_dict(), layout, whole_model=whole_model,
                      global_linear=global_linear.state_dict(), backbone=_backbone())
    return OrderedDict((k, v.clone()) for k, v in state.items())


def _variant(state, variant):
    if variant == "wrapped-head":
        return wrap(state, state_dict_wrapper=True)
    if variant == "wrapped-module-whole":  # a DataParallel training checkpoint
        wrapped = wrap(state, state_dict_wrapper=True, module_prefix=True)
        wrapped.update(epoch=7, optimizer={"state": {}, "param_groups": [{"lr": 0.1}]})
        return wrapped
    return state


def _assert_state_dicts_identical(actual, expected):
    assert set(actual) == set(expected), sorted(set(actual) ^ set(expected))
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


def _compare(model, dense, global_linear, whole, edge_head, training):
    blocks = (model.checkpoint.global_linear,) if whole else ()
    for module in (model, dense, global_linear) + blocks:
        module.train(training)
    x = torch.randn(B, D, C_IN if whole else C, generator=torch.Generator().manual_seed(5))
    tokens_ref = global_linear(x) if whole else x
    tokens = model.checkpoint.global_linear(x) if whole else x
    ref = dense(tokens_ref)
    out = model(tokens, return_edges=True)
    assert out.probs.shape == ref["probs"].shape
    assert relative_error(out.probs, ref["probs"]) <= TOL
    assert relative_error(out.edge_attr, ref["edge_attr"]) <= TOL
    if edge_head:
        assert relative_error(out.edge_logits, ref["edge_logits"]) <= TOL
    else:
        assert out.edge_logits is None


@pytest.mark.parametrize("explicit_source", [False, True], ids=["detected", "explicit"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layout,num_aus,num_sub", CASES, ids=CASE_IDS)
def test_load_reproduces_dense_reference(layout, num_aus, num_sub, variant, explicit_source,
                                         tmp_path, caplog):
    whole = variant.endswith("whole")
    edge_head = layout == "me-graphau"
    dense, global_linear = _reference(layout, num_aus, num_sub, seed=num_aus)
    state = _checkpoint(dense, global_linear, layout, whole)
    path = tmp_path / f"{layout}.pth"
    torch.save(_variant(state, variant), path)

    with caplog.at_level(logging.INFO, logger="pyg_mefl"):
        model = MEFL.from_pretrained(str(path) if explicit_source else path,
                                     source=layout if explicit_source else None)

    assert (model.num_main_aus, model.num_sub_aus, model.in_channels) == (num_aus, num_sub, C)
    assert model.residual == ("pre" if edge_head else "post")
    assert (model.edge_head is not None) == edge_head
    assert model.au_names == NAMES[num_aus]
    assert isinstance(model.checkpoint, CheckpointParts)
    assert model.checkpoint.source == layout
    records = [r for r in caplog.records if r.name == "pyg_mefl"]
    if whole:
        backbone = _backbone()
        _assert_state_dicts_identical(model.checkpoint.backbone, backbone)
        assert isinstance(model.checkpoint.global_linear, LinearBlock)
        assert len(records) == 1
        message = records[0].getMessage()
        assert "4 backbone tensors" in message and "backbone.conv1.weight" in message
        assert "model.checkpoint.backbone" in message
    else:
        assert model.checkpoint.backbone == {}
        assert model.checkpoint.global_linear is None
        assert records == []

    # eval first (leaves the running statistics alone), then train
    _compare(model, dense, global_linear, whole, edge_head, training=False)
    _compare(model, dense, global_linear, whole, edge_head, training=True)

    # the train-mode step updated both models' running statistics alike
    ours = model.to_published_state_dict(layout)
    expected = to_layout(dense.state_dict(), layout)
    assert set(ours) == set(expected)
    for key, value in expected.items():
        if value.is_floating_point():
            assert relative_error(ours[key], value) <= TOL, key
        else:
            assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("whole_model", [False, True], ids=["head", "whole"])
@pytest.mark.parametrize("layout,num_aus,num_sub", CASES, ids=CASE_IDS)
def test_round_trip_is_bit_exact(layout, num_aus, num_sub, whole_model, tmp_path):
    dense, global_linear = _reference(layout, num_aus, num_sub, seed=1)
    state = _checkpoint(dense, global_linear, layout, whole_model)
    model = MEFL.from_pretrained(state)
    saved = model.to_published_state_dict(layout, whole_model=whole_model)
    _assert_state_dicts_identical(saved, state)
    if layout != "me-graphau":
        assert list(saved) == list(state)  # the published module order
    else:  # ME-GraphAU's GNN declares U1..E1, U2..E2 before bnv1, bne1, bnv2, bne2
        prefix = "head.gnn." if whole_model else "gnn."
        gnn = [k[len(prefix):].split(".")[0] for k in saved if k.startswith(prefix)]
        assert list(OrderedDict.fromkeys(gnn)) == [
            "U1", "V1", "A1", "B1", "E1", "U2", "V2", "A2", "B2", "E2",
            "bnv1", "bne1", "bnv2", "bne2"]
        assert list(saved)[-2:] == [f"{prefix[:-4]}edge_fc.weight", f"{prefix[:-4]}edge_fc.bias"]
        assert next(iter(saved)) == ("backbone.conv1.weight" if whole_model else "sc")

    path = tmp_path / "saved.pth"
    torch.save(saved, path)
    again = MEFL.from_pretrained(path)
    _assert_state_dicts_identical(again.state_dict(), model.state_dict())
    assert again.au_names == model.au_names
    if whole_model:
        _assert_state_dicts_identical(again.checkpoint.global_linear.state_dict(),
                                      model.checkpoint.global_linear.state_dict())
        _assert_state_dicts_identical(again.checkpoint.backbone, model.checkpoint.backbone)
    _assert_state_dicts_identical(again.to_published_state_dict(layout, whole_model), state)
    # saved tensors are fresh: changing them does not touch the model
    first = next(k for k in saved if k.endswith("fc.weight"))
    saved[first].add_(1.0)
    _assert_state_dicts_identical(model.to_published_state_dict(layout, whole_model), state)


@pytest.mark.parametrize("whole_model", [False, True], ids=["head", "whole"])
def test_convert_between_mexca_and_opengraphau(whole_model):
    dense, global_linear = _reference("mexca", 27, 14, seed=2)
    mexca = _checkpoint(dense, global_linear, "mexca", whole_model)
    opengraphau = _checkpoint(dense, global_linear, "opengraphau", whole_model)
    model = MEFL.from_pretrained(mexca)
    _assert_state_dicts_identical(model.to_published_state_dict("opengraphau", whole_model),
                                  opengraphau)
    _assert_state_dicts_identical(
        MEFL.from_pretrained(opengraphau).to_published_state_dict("mexca", whole_model), mexca)


def test_float64_checkpoint_keeps_its_dtype():
    dense, global_linear = _reference("me-graphau", 8, 0, seed=3, dtype=torch.float64)
    state = _checkpoint(dense, global_linear, "me-graphau", whole_model=True)
    model = MEFL.from_pretrained(state)
    assert model.main_sc.dtype == torch.float64
    assert model.checkpoint.global_linear.lin.weight.dtype == torch.float64
    _assert_state_dicts_identical(model.to_published_state_dict("me-graphau", True), state)
    model.eval()
    dense.eval()
    global_linear.eval()
    x = torch.randn(B, D, C_IN, dtype=torch.float64)
    assert relative_error(model(model.checkpoint.global_linear.eval()(x)),
                          dense(global_linear(x))["probs"]) <= 1e-12


def _readme_checkpoint_block():
    """The code block of the README section "Load a published checkpoint"."""
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return next(block for block in blocks if "from_pretrained" in block)


def test_readme_example(capsys):
    """The README snippet runs, and reproduces the dense reference on what it loads."""
    namespace = {}
    exec(compile(_readme_checkpoint_block(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "torch.Size([4, 41])" in printed and "'AU1'" in printed
    assert "['backbone.conv1.weight']" in printed
    model, path = namespace["model"], namespace["path"]
    assert model.checkpoint.source == "opengraphau"
    mexca = MEFL.from_pretrained(path + ".mexca")
    assert mexca.checkpoint.source == "mexca"
    _assert_state_dicts_identical(mexca.state_dict(), model.state_dict())
    _assert_state_dicts_identical(mexca.checkpoint.global_linear.state_dict(),
                                  namespace["global_linear"].state_dict())

    saved = torch.load(path + ".mexca", weights_only=True)
    dense = DenseMEFL(32, 27, 14)  # mexca names are the dense reference's
    dense.load_state_dict({k[len("head."):]: v for k, v in saved.items() if k.startswith("head.")})
    reference = dense.eval()(namespace["global_linear"](namespace["tokens"]))["probs"]
    assert relative_error(namespace["probs"], reference) <= TOL
    for name in (path, path + ".mexca"):
        os.remove(name)
    os.rmdir(os.path.dirname(path))


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def checkpoints():
    """Published head state dicts of each layout (shared, not to be modified)."""
    out = {}
    for layout, num_aus, num_sub in (("mexca", 27, 14), ("opengraphau", 27, 14),
                                     ("me-graphau", 8, 0)):
        dense, global_linear = _reference(layout, num_aus, num_sub, seed=5)
        out[layout] = _checkpoint(dense, global_linear, layout, whole_model=False)
        out[layout + "/whole"] = _checkpoint(dense, global_linear, layout, whole_model=True)
    return out


def test_missing_file(tmp_path):
    path = tmp_path / "no" / "such.pth"
    with pytest.raises(FileNotFoundError, match="checkpoint file not found") as info:
        MEFL.from_pretrained(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"this is not a torch checkpoint", b""],
                         ids=["garbage", "empty"])
def test_unreadable_file(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable torch checkpoint") as info:
        MEFL.from_pretrained(path)
    assert str(path) in str(info.value)


def test_file_without_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="the file holds a list") as info:
        MEFL.from_pretrained(path)
    assert str(path) in str(info.value)


_UNPICKLED = []


def _record_unpickling(tag):
    _UNPICKLED.append(tag)
    return tag


class _Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return _record_unpickling, ("payload ran",)


def test_files_are_read_with_weights_only(tmp_path, checkpoints, monkeypatch):
    path = tmp_path / "payload.pth"
    torch.save({"state_dict": checkpoints["me-graphau"], "extra": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True") as info:
        MEFL.from_pretrained(path)
    assert str(path) in str(info.value)
    assert _UNPICKLED == []

    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or load(*a, **k))
    good = tmp_path / "good.pth"
    torch.save({"state_dict": checkpoints["me-graphau"], "epoch": 3}, good)
    MEFL.from_pretrained(good)
    assert calls and all(k.get("weights_only") is True for k in calls)


@pytest.mark.parametrize("layout,key", [
    ("mexca", "gnn.graph_layers.1.bne.running_var"),
    ("mexca", "main_node_linear_layers.5.bn.num_batches_tracked"),
    ("opengraphau", "edge_extractor.FAM.linear_k.bias"),
    ("opengraphau", "sub_sc"),
    ("me-graphau", "gnn.E2.weight"),
    ("me-graphau", "gnn.bnv1.num_batches_tracked"),
    ("me-graphau", "edge_fc.bias"),
    ("me-graphau", "sc"),
])
def test_missing_head_key(checkpoints, layout, key):
    state = dict(checkpoints[layout])
    del state[key]
    with pytest.raises(KeyError, match="missing key") as info:
        MEFL.from_pretrained(state)
    assert key in str(info.value)
    whole = {k: v for k, v in checkpoints[layout + "/whole"].items() if k != f"head.{key}"}
    with pytest.raises(KeyError) as info:
        MEFL.from_pretrained(whole)
    assert key in str(info.value)


@pytest.mark.parametrize("layout,prefix", [("me-graphau", "edge_fc."), ("mexca", "sub_sc"),
                                           ("opengraphau", "gnn.graph_layers.1.")])
def test_missing_part(checkpoints, layout, prefix):
    state = {k: v for k, v in checkpoints[layout].items() if not k.startswith(prefix)}
    with pytest.raises(KeyError, match=f"missing key '{prefix}"):
        MEFL.from_pretrained(state)


@pytest.mark.parametrize("layout,key", [
    ("mexca", "gnn.graph_layers.0.extra"),
    ("mexca", "edge_fc.weight"),  # no edge head in the mexca layout
    ("opengraphau", "gnn.graph_layers.0.linear_u.weight"),  # a mexca name in OpenGraphAU
    ("opengraphau", "edge_fc.bias"),
    ("me-graphau", "sub_sc"),  # no sub AUs in the ME-GraphAU layout
    ("me-graphau", "global_linear.fc.weight"),  # outside the head in a head-only dict
    ("me-graphau", "gnn.U3.weight"),  # published heads have 2 GNN layers
    ("opengraphau", "gnn.graph_layers.2.bnv.weight"),
])
def test_unexpected_head_key(checkpoints, layout, key):
    state = dict(checkpoints[layout])
    state[key] = torch.zeros(C, C)
    with pytest.raises(KeyError, match="unexpected key") as info:
        MEFL.from_pretrained(state)
    assert key in str(info.value)


@pytest.mark.parametrize("layout,key,shape", [
    ("mexca", "edge_extractor.edge_proj.weight", (C, C - 1)),
    ("opengraphau", "gnn.graph_layers.0.bne.weight", (27 * 27 - 1,)),
    ("opengraphau", "main_class_linears.3.bn.running_mean", (C, 1)),
    ("mexca", "sub_sc", (14, C + 1)),
    ("me-graphau", "edge_fc.weight", (5, C)),
    ("me-graphau", "gnn.bne2.num_batches_tracked", (1,)),
])
def test_wrong_shape(checkpoints, layout, key, shape):
    state = dict(checkpoints[layout])
    expected = list(state[key].shape)
    state[key] = torch.zeros(shape, dtype=state[key].dtype)
    with pytest.raises(ValueError) as info:
        MEFL.from_pretrained(state)
    message = str(info.value)
    assert key in message and str(expected) in message and str(list(shape)) in message


def test_sub_au_count_and_au_block_gaps(checkpoints):
    state = dict(checkpoints["opengraphau"], sub_sc=torch.zeros(13, C))
    with pytest.raises(ValueError, match=r"'sub_sc'.*expected shape \[14, C\], got \[13, 16\]"):
        MEFL.from_pretrained(state)
    state = dict(checkpoints["me-graphau"])
    state["class_linears.1000.fc.weight"] = torch.zeros(C, C)  # no model of 1001 AUs is built
    with pytest.raises(KeyError, match="missing key 'class_linears.8.fc.weight'"):
        MEFL.from_pretrained(state)


def test_global_linear_block_is_strict(checkpoints):
    whole = checkpoints["mexca/whole"]
    state = dict(whole)
    state["linear_global.bn.running_mean"] = torch.zeros(C - 2)
    with pytest.raises(ValueError) as info:
        MEFL.from_pretrained(state)
    assert "linear_global.bn.running_mean" in str(info.value)
    assert f"[{C}]" in str(info.value) and f"[{C - 2}]" in str(info.value)
    state = {k: v for k, v in whole.items() if k != "linear_global.bn.running_var"}
    with pytest.raises(KeyError, match="linear_global.bn.running_var"):
        MEFL.from_pretrained(state)
    state = dict(whole, **{"linear_global.fc.extra": torch.zeros(1)})
    with pytest.raises(KeyError, match="unexpected.*linear_global.fc.extra"):
        MEFL.from_pretrained(state)


def test_unknown_source(checkpoints):
    with pytest.raises(ValueError, match="openface") as info:
        MEFL.from_pretrained(checkpoints["mexca"], source="openface")
    assert "me-graphau" in str(info.value)
    model = MEFL.from_pretrained(checkpoints["mexca"], source="MEXCA")  # case-insensitive
    with pytest.raises(ValueError, match="layout.*'graphau'"):
        model.to_published_state_dict("graphau")


def test_source_that_does_not_match_the_keys(checkpoints):
    with pytest.raises(KeyError, match="main_class_linears.0.fc.weight"):
        MEFL.from_pretrained(checkpoints["mexca"], source="opengraphau")


def test_undetectable_layout():
    with pytest.raises(KeyError, match="cannot tell the checkpoint layout"):
        MEFL.from_pretrained({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(KeyError, match="cannot tell the checkpoint layout"):
        MEFL.from_pretrained({"head.fc.weight": torch.zeros(2, 2),
                              "backbone.conv1.weight": torch.zeros(1)})


@pytest.mark.parametrize("model,layout,reason", [
    (lambda: MEFL(C, 12, 14, residual="pre", edge_head=True), "me-graphau", "sub AUs"),
    (lambda: MEFL(C, 12, 0, residual="pre"), "me-graphau", "no edge head"),
    (lambda: MEFL(C, 27, 0, residual="post"), "opengraphau", "no sub AUs"),
    (lambda: MEFL(C, 8, 0, residual="post", edge_head=True), "mexca", "edge head"),
    (lambda: MEFL(C, 8, 0, residual="post", edge_head=True), "opengraphau", "edge head"),
    (lambda: MEFL(C, 8, 0, residual="pre", edge_head=True), "opengraphau", "residual='pre'"),
    (lambda: MEFL(C, 27, 14, residual="post"), "me-graphau", "residual='post'"),
    (lambda: MEFL(C, 27, 14, num_layers=3), "mexca", "num_layers=3"),
])
def test_layout_that_cannot_hold_the_model(model, layout, reason):
    with pytest.raises(ValueError, match=f"layout '{layout}' cannot hold this model") as info:
        model().to_published_state_dict(layout)
    assert reason in str(info.value)


def test_saving_a_model_that_was_not_loaded():
    model = MEFL(C, 27, 14)
    head = model.to_published_state_dict("opengraphau")
    assert set(model.to_published_state_dict("opengraphau", whole_model=True)) == \
        {f"head.{k}" for k in head}
    again = MEFL.from_pretrained(head)
    _assert_state_dicts_identical(again.state_dict(), model.state_dict())


@pytest.mark.parametrize("obj", [42, [torch.zeros(1)], None, torch.zeros(3)],
                         ids=["int", "list", "none", "tensor"])
def test_not_a_mapping(obj):
    with pytest.raises(TypeError, match="expected a path or a mapping"):
        MEFL.from_pretrained(obj)


def test_mapping_with_non_tensor_values(checkpoints):
    state = dict(checkpoints["me-graphau"], sc=[1.0, 2.0])
    with pytest.raises(TypeError, match="'sc': list"):
        MEFL.from_pretrained(state)


def test_key_twice_with_and_without_module_prefix(checkpoints):
    state = dict(checkpoints["me-graphau"])
    state["module.sc"] = state["sc"]
    with pytest.raises(KeyError, match="'sc' occurs twice"):
        MEFL.from_pretrained(state)
