"""Published stage-1 (ANFL) checkpoints: strict loading, exact outputs, bit-exact save back in the
published key order, stage detection and typed errors."""
from collections import OrderedDict

import pytest
import torch

from pyg_mefl.testing.anfl_reference import DenseANFL, to_anfl_layout
from pyg_mefl.testing.dense_reference import DenseLinearBlock, DenseMEFL, to_layout
from pyg_mefl.testing.pairs import randomize_batchnorms, relative_error
from pyg_mefl import (ANFL, BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS,
                      anfl_head_to_published, detect_stage, load_anfl_head)

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5
C, C_IN, D, B = 16, 12, 5, 3  # head width, backbone width, tokens, faces
CASES = [  # (layout, main AUs, sub AUs, published K)
    ("opengraphau", 27, 14, 4),
    ("mexca", 27, 14, 4),
    ("me-graphau", 12, 0, 4),
    ("me-graphau", 8, 0, 3),
]
CASE_IDS = [f"{layout}-{n}" for layout, n, _, _ in CASES]
NAMES = {27: list(OPENGRAPHAU_MAIN_AUS) + list(OPENGRAPHAU_SUB_AUS), 12: list(BP4D_AUS),
         8: list(DISFA_AUS)}
# The first keys of each layout's published head, in order (from the published modules).
FIRST_KEYS = {
    "opengraphau": ["main_sc", "sub_sc", "main_class_linears.0.fc.weight"],
    "mexca": ["afg.main_node_linear_layers.0.fc.weight", "afg.main_node_linear_layers.0.fc.bias"],
    "me-graphau": ["sc", "class_linears.0.fc.weight", "class_linears.0.fc.bias"],
}
GNN_KEYS = {
    "opengraphau": ["gnn.U.weight", "gnn.U.bias", "gnn.V.weight", "gnn.V.bias", "gnn.bnv.weight",
                    "gnn.bnv.bias", "gnn.bnv.running_mean", "gnn.bnv.running_var",
                    "gnn.bnv.num_batches_tracked"],
}
GNN_KEYS["me-graphau"] = GNN_KEYS["opengraphau"]
GNN_KEYS["mexca"] = [k.replace("gnn.U", "fgg.gnn.linear_u").replace("gnn.V", "fgg.gnn.linear_v")
                     .replace("gnn.bnv", "fgg.gnn.bnv") for k in GNN_KEYS["opengraphau"]]


def _reference(num_aus, num_sub, k, seed=0):
    """A dense head and global linear block with random BN statistics and batch counters."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dense, global_linear = DenseANFL(C, num_aus, num_sub, k), DenseLinearBlock(C_IN, C)
    for module in (dense, global_linear):
        randomize_batchnorms(module, generator)
        for bn in module.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=generator)))
    return dense, global_linear


def _head(dense, layout):
    return OrderedDict((k, v.clone()) for k, v in to_anfl_layout(dense.state_dict(),
                                                                  layout).items())


def _whole(dense, global_linear, layout):
    """A whole-model training checkpoint as the published scripts save it (DataParallel)."""
    prefix = "linear_global." if layout == "mexca" else "global_linear."
    state = OrderedDict([("backbone.conv1.weight", torch.randn(4, 3, 3, 3)),
                         ("backbone.bn1.num_batches_tracked", torch.tensor(9))])
    state.update((prefix + k, v.clone()) for k, v in global_linear.state_dict().items())
    state.update(("head." + k, v) for k, v in _head(dense, layout).items())
    return {"epoch": 3, "optimizer": {"state": {}},
            "state_dict": OrderedDict(("module." + k, v) for k, v in state.items())}


@pytest.mark.parametrize("explicit", [False, True], ids=["detected", "explicit"])
@pytest.mark.parametrize("layout,num_aus,num_sub,k", CASES, ids=CASE_IDS)
def test_head_loads_exactly_and_saves_back_bit_exact(layout, num_aus, num_sub, k, explicit):
    dense, _ = _reference(num_aus, num_sub, k, seed=num_aus)
    head = _head(dense, layout)
    assert list(head)[:len(FIRST_KEYS[layout])] == FIRST_KEYS[layout]
    assert list(head)[-9:] == GNN_KEYS[layout]
    model = load_anfl_head(head, layout if explicit else None)
    assert isinstance(model, ANFL)
    assert (model.num_main_aus, model.num_sub_aus, model.neighbor_num) == (num_aus, num_sub, k)
    assert model.au_names == NAMES[num_aus] and model.metric == "dots"
    tokens = torch.randn(B, D, C, generator=torch.Generator().manual_seed(1))
    for training in (False, True):
        dense.train(training)
        model.train(training)
        assert relative_error(model(tokens), dense(tokens)) <= TOL

    fresh = load_anfl_head(head, layout)  # the trained model moved on; save an untouched one
    out = anfl_head_to_published(fresh, layout)
    assert list(out) == list(head)  # the published key order
    for key, value in head.items():
        assert out[key].dtype == value.dtype and torch.equal(out[key], value), key
    assert fresh.to_published_state_dict(layout).keys() == head.keys()


@pytest.mark.parametrize("layout,num_aus,num_sub,k", [CASES[1], CASES[3]],
                         ids=[CASE_IDS[1], CASE_IDS[3]])
def test_whole_training_checkpoint_file(layout, num_aus, num_sub, k, tmp_path):
    dense, global_linear = _reference(num_aus, num_sub, k, seed=2)
    path = tmp_path / "stage1.pth"
    torch.save(_whole(dense, global_linear, layout), path)
    assert detect_stage(torch.load(path, weights_only=True)["state_dict"]) == "anfl"
    model = ANFL.from_pretrained(path)
    assert model.checkpoint.source == layout
    assert list(model.checkpoint.backbone) == ["backbone.conv1.weight",
                                               "backbone.bn1.num_batches_tracked"]
    x = torch.randn(B, D, C_IN)
    for module in (model, dense, global_linear, model.checkpoint.global_linear):
        module.eval()
    assert relative_error(model(model.checkpoint.global_linear(x)),
                          dense(global_linear(x))) <= TOL


def test_overrides():
    dense, _ = _reference(12, 0, 4)
    head = _head(dense, "me-graphau")
    names = [f"x{i}" for i in range(12)]
    model = load_anfl_head(head, "me-graphau", neighbor_num=6, metric="cosine", au_names=names)
    assert (model.neighbor_num, model.metric, model.au_names) == (6, "cosine", names)
    with pytest.raises(TypeError, match=r"unexpected override\(s\) \['num_layers'\]"):
        load_anfl_head(head, "me-graphau", num_layers=2)
    with pytest.raises(ValueError, match="neighbor_num: expected at most num_main_aus=12"):
        load_anfl_head(head, "me-graphau", neighbor_num=13)


def _stage_2(layout, num_aus, num_sub):
    torch.manual_seed(0)
    me_graphau = layout == "me-graphau"
    dense = DenseMEFL(C, num_aus, num_sub, residual="pre" if me_graphau else "post",
                      edge_head=me_graphau)
    return to_layout(dense.state_dict(), layout)


@pytest.mark.parametrize("layout,num_aus,num_sub,k", CASES[1:3], ids=CASE_IDS[1:3])
def test_detect_stage(layout, num_aus, num_sub, k):
    head = _head(_reference(num_aus, num_sub, k)[0], layout)
    stage_2 = _stage_2(layout, num_aus, num_sub)
    assert detect_stage(head) == "anfl"
    assert detect_stage({"head." + key: v for key, v in head.items()}) == "anfl"
    assert detect_stage(stage_2) == "mefl"
    assert detect_stage({"head." + key: v for key, v in stage_2.items()}) == "mefl"
    with pytest.raises(KeyError, match=r"a stage-2 \(MEFL\) checkpoint"):
        load_anfl_head(stage_2, layout)
    with pytest.raises(KeyError, match=r"cannot tell the checkpoint's stage: no stage-1 GNN "
                                       r"key.*'gnn.U.weight'"):
        detect_stage({"backbone.fc.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="both the stage-1 GNN key"):
        detect_stage({**head, **stage_2})


def test_stage_2_file_as_stage_1_is_refused(tmp_path):
    path = tmp_path / "stage2.pth"
    whole = {"head." + k: v for k, v in _stage_2("mexca", 27, 14).items()}
    torch.save({"state_dict": whole}, path)
    with pytest.raises(KeyError, match=r"a stage-2 \(MEFL\) checkpoint \(keys such as "
                                       r"'edge_extractor\.[^']+'\), not a stage-1 \(ANFL\) one: "
                                       r"load it with MEFL.from_pretrained"):
        ANFL.from_pretrained(path)


def _opengraphau_head():
    return _head(_reference(27, 14, 4)[0], "opengraphau")


def test_missing_and_unexpected_keys_are_named():
    head = _opengraphau_head()
    del head["gnn.V.bias"]
    with pytest.raises(KeyError, match=r"missing key 'gnn.V.bias' in the opengraphau stage-1 "
                                       r"checkpoint \(needed for gnn.lin_v.bias"):
        load_anfl_head(head, "opengraphau")
    head = _opengraphau_head()
    head["gnn.W.weight"] = torch.zeros(C, C)
    with pytest.raises(KeyError, match=r"unexpected key\(s\) in the opengraphau stage-1 "
                                       r"checkpoint: \['gnn.W.weight'\]"):
        load_anfl_head(head, "opengraphau")
    head = _opengraphau_head()
    del head["main_class_linears.5.bn.running_var"]
    with pytest.raises(KeyError, match=r"missing key 'main_class_linears.5.bn.running_var' in "
                                       r"the opengraphau stage-1 checkpoint"):
        load_anfl_head(head)
    head = OrderedDict((k, v) for k, v in _opengraphau_head().items()
                       if not k.startswith("main_class_linears.5."))  # a whole AU block
    with pytest.raises(KeyError, match=r"missing key 'main_class_linears.5.fc.weight' in the "
                                       r"opengraphau stage-1 checkpoint \(AU blocks up to 26"):
        load_anfl_head(head)
    head = _opengraphau_head()
    del head["sub_sc"]
    with pytest.raises(KeyError, match="missing key 'sub_sc' in the opengraphau stage-1 "
                                       "checkpoint"):
        load_anfl_head(head)


def test_wrong_shapes_are_named():
    head = _opengraphau_head()
    head["gnn.bnv.weight"] = torch.ones(28)
    with pytest.raises(ValueError, match=r"key 'gnn.bnv.weight' in the opengraphau stage-1 "
                                         r"checkpoint: expected shape \[27\], got \[28\]"):
        load_anfl_head(head)
    head = _opengraphau_head()
    head["gnn.U.weight"] = torch.zeros(C, C + 1)
    with pytest.raises(ValueError, match=r"key 'gnn.U.weight'.*expected shape \[16, 16\], "
                                         r"got \[16, 17\]"):
        load_anfl_head(head)


def test_layout_and_source_errors():
    head = _opengraphau_head()
    with pytest.raises(KeyError, match="cannot tell the stage-1 checkpoint layout"):
        load_anfl_head({"gnn.U.weight": torch.zeros(C, C)})
    with pytest.raises(ValueError, match="source: expected one of"):
        load_anfl_head(head, "openface")
    with pytest.raises(KeyError, match="the head's own keys are expected, got whole-model keys "
                                       "such as 'head.main_sc'"):
        load_anfl_head({"head." + k: v for k, v in head.items()}, "opengraphau")
    model = load_anfl_head(head)
    with pytest.raises(ValueError, match=r"layout 'me-graphau' cannot hold this model "
                                         r"\(num_sub_aus=14\)"):
        model.to_published_state_dict("me-graphau")
    with pytest.raises(ValueError, match="layout: expected one of"):
        model.to_published_state_dict("dense")
    no_sub = ANFL(C, 12, 0)
    with pytest.raises(ValueError, match="layout 'mexca' cannot hold this model"):
        anfl_head_to_published(no_sub, "mexca")
