"""Outputs stay finite at extreme scales, for zero features, one face, and bf16 autocast."""
import pytest
import torch

from pyg_mefl.testing.pairs import make_pair, relative_error
from pyg_mefl import MEFL


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MEFL(16, num_main_aus=12, num_sub_aus=14, edge_head=True)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_finite_at_extreme_token_scales(model, scale, training):
    model.train(training)
    tokens = (torch.randn(3, 6, 16) * scale).requires_grad_()
    out = model(tokens, return_edges=True)
    assert torch.isfinite(out.probs).all() and torch.isfinite(out.edge_logits).all()
    assert (out.probs.abs() <= 1 + 1e-6).all()
    out.probs.sum().backward()
    assert torch.isfinite(tokens.grad).all()


def test_zero_node_features_score_zero_not_nan():
    """Cosine with a zero vector: the published normalise-then-dot gives 0."""
    torch.manual_seed(1)
    model = MEFL(8, num_main_aus=8, num_sub_aus=0).eval()
    with torch.no_grad():
        model.afg.weight.zero_()
        model.afg.bias.fill_(-5.0)  # ReLU(BN(.)) == 0 for every AU token in eval mode
        model.afg.norm.running_mean.zero_()
        for layer in model.gnn.layers:
            layer.lin_u.weight.zero_()
            layer.lin_v.weight.zero_()
            layer.norm_node.bias.fill_(-1.0)
    probs = model(torch.randn(2, 4, 8))
    assert torch.equal(probs, torch.zeros_like(probs))


def test_one_face_in_training_mode_matches_reference():
    dense, model = make_pair(16, 8, 0, "pre", True, seed=2)
    tokens = torch.randn(1, 5, 16)
    probs = model.train()(tokens)
    assert torch.isfinite(probs).all()
    assert relative_error(probs, dense.train()(tokens)["probs"]) < 1e-5


def test_bf16_autocast_on_cpu(model):
    model.eval()
    tokens = torch.randn(4, 6, 16)
    reference = model(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = model(tokens)
    assert torch.isfinite(probs).all()
    assert relative_error(probs.float(), reference) < 0.1
