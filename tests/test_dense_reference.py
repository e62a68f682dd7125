"""Sanity tests of the dense MEFL reference (pyg_mefl.testing.dense_reference) against SPEC."""
import math

import pytest
import torch
import torch.nn.functional as F

from pyg_mefl.testing.dense_reference import (
    SUB_AU_MAIN_INDEX,
    DenseGatedGNNLayer,
    DenseGEM,
    DenseLinearBlock,
    DenseMEFL,
    to_layout,
    wrap,
)

C, D, B = 16, 5, 3


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize_bn(bn):
    """Random affine and running statistics so that BN slots are distinguishable."""
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)


def _eval_bn(x, bn, slot):
    """Eval-mode BatchNorm of one slot, written out."""
    return ((x - bn.running_mean[slot]) / torch.sqrt(bn.running_var[slot] + bn.eps)
            * bn.weight[slot] + bn.bias[slot])


def _attention(ca, y, x):
    """SPEC eq. (3) written with explicit matrices: y, x are [B, D, C]."""
    q = y @ ca.linear_q.weight.t() + ca.linear_q.bias
    k = x @ ca.linear_k.weight.t() + ca.linear_k.bias
    v = x @ ca.linear_v.weight.t() + ca.linear_v.bias
    return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C // 2), dim=-1) @ v


@pytest.mark.parametrize("num_main, num_sub, residual, edge_head",
                         [(27, 14, "post", False), (12, 0, "pre", True), (8, 0, "pre", False)])
def test_shapes(num_main, num_sub, residual, edge_head):
    model = DenseMEFL(C, num_main, num_sub, residual=residual, edge_head=edge_head)
    out = model(torch.randn(B, D, C))
    assert out["probs"].shape == (B, num_main + num_sub)
    assert out["gem_edge_attr"].shape == (B, num_main ** 2, C)
    assert out["edge_attr"].shape == (B, num_main ** 2, C)
    assert out["node_attr"].shape == (B, num_main, C)
    if edge_head:
        assert out["edge_logits"].shape == (B, num_main ** 2, 4)
    else:
        assert out["edge_logits"] is None
    assert out["probs"].abs().max() <= 1 + 1e-6


def test_linear_block_is_relu_bn_over_channels():
    block = DenseLinearBlock(C, 2 * C).train()
    x = torch.randn(B, D, C)
    y = x @ block.fc.weight.t() + block.fc.bias
    mean = y.mean(dim=(0, 1))
    var = y.var(dim=(0, 1), unbiased=False)
    expected = torch.relu((y - mean) / torch.sqrt(var + block.bn.eps))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_sub_au_scores_use_published_main_index():
    model = DenseMEFL(C, 27, 14)
    out = model(torch.randn(B, D, C))
    v, probs = out["node_attr"], out["probs"]
    for k, m in enumerate(SUB_AU_MAIN_INDEX):
        for t in (2 * k, 2 * k + 1):
            prototype = torch.relu(model.sub_sc[t]).expand_as(v[:, m])
            expected = F.cosine_similarity(v[:, m], prototype, dim=-1)
            torch.testing.assert_close(probs[:, 27 + t], expected, rtol=1e-5, atol=1e-6)
    main = F.cosine_similarity(v, torch.relu(model.main_sc).unsqueeze(0).expand_as(v), dim=-1)
    torch.testing.assert_close(probs[:, :27], main, rtol=1e-5, atol=1e-6)


def test_gate_is_softmax_over_sources():
    N = 4
    layer = DenseGatedGNNLayer(C, N)
    # [b, target i, source j, c]
    gate = layer.edge_gate(3 * torch.randn(B, N * N, C)).view(B, N, N, C)
    torch.testing.assert_close(gate.sum(dim=2), torch.ones(B, N, C))
    assert not torch.allclose(gate.sum(dim=1), torch.ones(B, N, C))


def test_gem_edge_order_matches_loop():
    N = 2
    gem = DenseGEM(C, N).eval()
    _randomize_bn(gem.bn)
    class_feature, global_feature = torch.randn(B, N, D, C), torch.randn(B, D, C)
    with torch.no_grad():
        out = gem(class_feature, global_feature)
        fam = [_attention(gem.fam, class_feature[:, n], global_feature) for n in range(N)]
        for i in range(N):  # target
            for j in range(N):  # source
                h = _attention(gem.arm, fam[j], fam[i])  # query from source, key/value from target
                p = h @ gem.edge_proj.weight.t() + gem.edge_proj.bias
                torch.testing.assert_close(out[:, i * N + j], _eval_bn(p, gem.bn, i * N + j),
                                           rtol=1e-5, atol=1e-5)


def test_gem_batchnorm_is_per_slot():
    N = 3
    gem = DenseGEM(C, N).train()
    _randomize_bn(gem.bn)
    gem.bn.running_mean.zero_()
    gem.bn.running_var.fill_(1.0)
    captured = {}
    gem.edge_proj.register_forward_hook(lambda mod, inp, out: captured.update(pre=out.detach()))
    with torch.no_grad():
        out = gem(torch.randn(B, N, D, C), torch.randn(B, D, C))
    pre = captured["pre"].transpose(0, 1).reshape(N * N, -1)  # [slot, B*D*C]
    assert pre.mean(dim=1).std() > 1e-3  # slots really differ
    post = out.transpose(0, 1).reshape(N * N, -1)
    torch.testing.assert_close(post.mean(dim=1), gem.bn.bias, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(post.var(dim=1, unbiased=False), gem.bn.weight ** 2, rtol=1e-3,
                               atol=1e-4)
    torch.testing.assert_close(gem.bn.running_mean, 0.1 * pre.mean(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gem.bn.running_var, 0.9 + 0.1 * pre.var(dim=1, unbiased=True),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("residual", ["post", "pre"])
def test_gnn_layer_matches_loop(residual):
    N = 3
    layer = DenseGatedGNNLayer(C, N, residual=residual).eval()
    _randomize_bn(layer.bnv)
    _randomize_bn(layer.bne)
    v, e = torch.randn(B, N, C), torch.randn(B, N * N, C)
    with torch.no_grad():
        v_new, e_hat = layer(v, e)
        lin = lambda m, x: x @ m.weight.t()  # noqa: E731
        for i in range(N):
            logits = []
            for j in range(N):
                s = i * N + j
                msg = (lin(layer.linear_a, v[:, i]) + lin(layer.linear_b, v[:, j])
                       + lin(layer.linear_e, e[:, s]))
                expected_e = e[:, s] + torch.relu(_eval_bn(msg, layer.bne, s))
                torch.testing.assert_close(e_hat[:, s], expected_e, rtol=1e-5, atol=1e-5)
                logits.append(torch.sigmoid(expected_e))
            eta = torch.softmax(torch.stack(logits), dim=0)  # over sources j
            agg = sum(eta[j] * lin(layer.linear_v, v[:, j]) for j in range(N)) / N
            update = _eval_bn(lin(layer.linear_u, v[:, i]) + agg, layer.bnv, i)
            expected_v = (v[:, i] + torch.relu(update) if residual == "post"
                          else torch.relu(v[:, i] + update))
            torch.testing.assert_close(v_new[:, i], expected_v, rtol=1e-5, atol=1e-5)


def _shapes(sd):
    return sorted(tuple(t.shape) for t in sd.values())


def test_layouts_key_names():
    N = 27
    sd = DenseMEFL(C, N, 14).state_dict()
    global_linear = DenseLinearBlock(C, C).state_dict()
    backbone = {"backbone.conv1.weight": torch.zeros(2, 3)}

    mexca = to_layout(sd, "mexca", whole_model=True, global_linear=global_linear, backbone=backbone)
    ogau = to_layout(sd, "opengraphau", whole_model=True, global_linear=global_linear,
                     backbone=backbone)
    expected_mexca = {
        "linear_global.fc.weight": (C, C), "linear_global.bn.running_mean": (C,),
        "head.main_node_linear_layers.26.bn.num_batches_tracked": (),
        "head.edge_extractor.fam.linear_q.weight": (C // 2, C),
        "head.edge_extractor.arm.linear_v.bias": (C,),
        "head.edge_extractor.bn.running_var": (N * N,),
        "head.gnn.graph_layers.1.linear_u.weight": (C, C),
        "head.gnn.graph_layers.0.bne.weight": (N * N,),
        "head.gnn.graph_layers.0.bnv.num_batches_tracked": (),
        "head.main_sc": (N, C), "head.sub_sc": (14, C), "backbone.conv1.weight": (2, 3),
    }
    expected_ogau = {
        "global_linear.bn.weight": (C,),
        "head.main_class_linears.26.bn.num_batches_tracked": (),
        "head.edge_extractor.FAM.linear_q.weight": (C // 2, C),
        "head.edge_extractor.ARM.linear_k.bias": (C // 2,),
        "head.edge_extractor.edge_proj.weight": (C, C),
        "head.gnn.graph_layers.1.U.weight": (C, C),
        "head.gnn.graph_layers.1.E.weight": (C, C),
        "head.gnn.graph_layers.1.bne.running_var": (N * N,),
        "head.gnn.graph_layers.1.bnv.bias": (N,),
        "head.main_sc": (N, C), "head.sub_sc": (14, C), "backbone.conv1.weight": (2, 3),
    }
    for converted, expected in ((mexca, expected_mexca), (ogau, expected_ogau)):
        for key, shape in expected.items():
            assert tuple(converted[key].shape) == shape, key
    assert not any("linear_u" in k or ".fam." in k or "main_node" in k for k in ogau)

    me_sd = DenseMEFL(C, N, 0, residual="pre", edge_head=True).state_dict()
    me = to_layout(me_sd, "me-graphau", whole_model=True, global_linear=global_linear)
    gnn_keys = {f"head.gnn.{m}{layer}.weight" for m in "UVABE" for layer in (1, 2)}
    gnn_keys |= {f"head.gnn.{bn}{layer}.{p}" for bn in ("bnv", "bne") for layer in (1, 2)
                 for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert {k for k in me if k.startswith("head.gnn.")} == gnn_keys
    assert tuple(me["head.gnn.bne2.running_var"].shape) == (N * N,)
    assert tuple(me["head.gnn.bnv1.weight"].shape) == (N,)
    assert tuple(me["head.sc"].shape) == (N, C)
    assert tuple(me["head.edge_fc.weight"].shape) == (4, C)
    assert tuple(me["head.class_linears.0.fc.weight"].shape) == (C, C)
    assert "head.edge_extractor.FAM.linear_q.weight" in me
    assert "global_linear.fc.bias" in me

    # Same tensors, same shapes, only names change.
    head_only = {"mexca": to_layout(sd, "mexca"), "opengraphau": to_layout(sd, "opengraphau")}
    for converted in head_only.values():
        assert len(converted) == len(sd)
        assert all(a is b for a, b in zip(converted.values(), sd.values()))
    assert _shapes(mexca) == _shapes(ogau)
    assert _shapes(to_layout(me_sd, "me-graphau")) == _shapes(me_sd)
    assert len(mexca) == len(sd) + len(global_linear) + len(backbone)

    with pytest.raises(ValueError):
        to_layout(sd, "me-graphau")
    with pytest.raises(ValueError):
        to_layout(sd, "unknown")


def test_wrap():
    sd = to_layout(DenseMEFL(C, 8, 0).state_dict(), "opengraphau", whole_model=True)
    wrapped = wrap(sd, state_dict_wrapper=True, module_prefix=True)
    assert set(wrapped) == {"state_dict"}
    assert set(wrapped["state_dict"]) == {"module." + k for k in sd}
    assert wrap(sd) is sd
    assert set(wrap(sd, module_prefix=True)) == {"module." + k for k in sd}
