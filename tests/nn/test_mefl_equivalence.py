"""MEFL against the dense reference of SPEC.md: outputs, edge features, gradients, BN statistics,
on the fast paths and on the layers' reference bodies."""
import pytest
import torch

from pyg_mefl.nn.fused import mefl as fused_mefl
from pyg_mefl.nn.fused.gem import graph_edge_model
from pyg_mefl.testing.pairs import make_pair, relative_error
from pyg_mefl.pretrained import HeadConfig, to_native

TOL = 1e-5
CONFIGS = [  # (num_aus, num_sub, residual, edge_head)
    (8, 0, "pre", True),     # DISFA, ME-GraphAU
    (12, 0, "pre", True),    # BP4D, ME-GraphAU
    (27, 14, "post", False),  # OpenGraphAU / mexca
    (27, 0, "post", True),
    (12, 14, "pre", False),
]


def _gem_output(model, dense, monkeypatch):
    """Capture the GEM's edge features of both models during one forward (the fast path asks
    ours for the first GNN layer's projection as well where the face basis is active:
    (edge_attr, E e))."""
    seen = {}

    def keep(output):
        seen["ours"] = output if isinstance(output, torch.Tensor) else output[0]
        return output

    model.gem.register_forward_hook(lambda m, i, o: keep(o))  # the reference body
    monkeypatch.setattr(fused_mefl, "graph_edge_model",
                        lambda *args, **kwargs: keep(graph_edge_model(*args, **kwargs)))
    dense.edge_extractor.register_forward_hook(
        lambda m, i, o: seen.__setitem__("dense", o.mean(dim=-2)))
    return seen


def _grads_as_native(model, dense):
    """The dense reference's parameter gradients under pyg_mefl's names."""
    state = dense.state_dict()
    state.update({name: p.grad for name, p in dense.named_parameters()})
    config = HeadConfig(model.in_channels, model.num_main_aus, model.num_sub_aus,
                        len(model.gnn.layers), model.edge_head is not None, model.residual)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    return to_native(state, "mexca", config, expected)


@pytest.mark.parametrize("num_aus,num_sub,residual,edge_head", CONFIGS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_backward_and_running_stats(num_aus, num_sub, residual, edge_head, training,
                                            paths, monkeypatch):
    channels, num_tokens, batch = 18, 7, 3  # odd sizes
    dense, model = make_pair(channels, num_aus, num_sub, residual, edge_head, seed=num_aus)
    dense.train(training)
    model.train(training)
    seen = _gem_output(model, dense, monkeypatch)
    tokens = torch.randn(batch, num_tokens, channels)
    x_ours, x_dense = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()

    ours = model(x_ours, return_edges=True)
    ref = dense(x_dense)
    assert ours.probs.shape == (batch, num_aus + num_sub)
    assert relative_error(ours.probs, ref["probs"]) < TOL
    assert relative_error(seen["ours"].view(batch, num_aus ** 2, -1), seen["dense"]) < TOL
    assert relative_error(ours.edge_attr, ref["edge_attr"]) < TOL
    if edge_head:
        assert ours.edge_logits.shape == (batch, num_aus ** 2, 4)
        assert relative_error(ours.edge_logits, ref["edge_logits"]) < TOL
    else:
        assert ours.edge_logits is None

    weights = torch.randn_like(ours.probs)
    loss_ours = (ours.probs * weights).sum() + ours.edge_attr.square().mean()
    loss_ref = (ref["probs"] * weights).sum() + ref["edge_attr"].square().mean()
    if edge_head:
        loss_ours = loss_ours + ours.edge_logits.sum()
        loss_ref = loss_ref + ref["edge_logits"].sum()
    loss_ours.backward()
    loss_ref.backward()
    assert relative_error(x_ours.grad, x_dense.grad) < TOL
    expected_grads = _grads_as_native(model, dense)
    for name, param in model.named_parameters():
        # Key biases (softmax is shift-invariant) and the AU-block bias before a train-mode BN
        # have zero gradient in exact arithmetic, so a bias is measured on its layer's scale.
        sibling = expected_grads.get(name.replace("bias", "weight"), expected_grads[name])
        scale = max(float(expected_grads[name].abs().max()), float(sibling.abs().max()))
        difference = float((param.grad - expected_grads[name]).abs().max())
        assert difference <= TOL * scale, (name, difference, scale)

    expected_state = to_native(dense.state_dict(), "mexca", _config(model), _shapes(model))
    for name, buffer in model.state_dict().items():
        if "running" in name or "num_batches" in name:
            assert torch.allclose(buffer.double(), expected_state[name].double(),
                                  rtol=TOL, atol=TOL), name


def _config(model):
    return HeadConfig(model.in_channels, model.num_main_aus, model.num_sub_aus,
                      len(model.gnn.layers), model.edge_head is not None, model.residual)


def _shapes(model):
    return {k: v.shape for k, v in model.state_dict().items()}


def test_float64_agrees_to_round_off():
    dense, model = make_pair(16, 12, 14, "post", False, seed=3, dtype=torch.float64)
    tokens = torch.randn(2, 5, 16, dtype=torch.float64)
    for training in (True, False):
        dense.train(training)
        model.train(training)
        assert relative_error(model(tokens), dense(tokens)["probs"]) < 1e-10


def test_several_training_steps_keep_agreeing():
    """Running statistics and weights stay equal through optimisation (momentum updates)."""
    dense, model = make_pair(16, 8, 0, "pre", True, seed=5)
    opt_ours = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_ref = torch.optim.SGD(dense.parameters(), lr=0.05)
    for step in range(3):
        tokens = torch.randn(4, 6, 16)
        for opt, out in ((opt_ours, model(tokens)), (opt_ref, dense(tokens)["probs"])):
            opt.zero_grad()
            out.sum().backward()
            opt.step()
    model.eval()
    dense.eval()
    tokens = torch.randn(2, 6, 16)
    assert relative_error(model(tokens), dense(tokens)["probs"]) < 1e-4
