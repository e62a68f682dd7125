"""The published loss (SPEC §7) and the streaming AU metrics against hand-computed values."""
import math

import pytest
import torch

from pyg_mefl.train.losses import MEFLLoss, WeightedAsymmetricLoss, au_class_weights, relation_loss
from pyg_mefl.train.metrics import AUMetrics

NAN = float("nan")


def test_weighted_asymmetric_loss_by_hand():
    probs = torch.tensor([[0.9, 0.2, NAN], [0.4, 0.7, 0.6]], requires_grad=True)
    target = torch.tensor([[1, 0, -1], [0, -1, 1]])
    weight = torch.tensor([0.5, 1.0, 1.5])
    loss = WeightedAsymmetricLoss(weight)(probs, target)
    # the four known elements: -w [y log p + (1 - y) p log(1 - p)], averaged
    expected = -(0.5 * math.log(0.9) + 1.0 * 0.2 * math.log(0.8)
                 + 0.5 * 0.4 * math.log(0.6) + 1.5 * math.log(0.6)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    loss.backward()
    grad = probs.grad
    assert torch.isfinite(grad).all()  # the NaN at a masked position leaks nowhere
    assert grad[0, 2] == 0 and grad[1, 1] == 0
    # stop-gradient: a negative's gradient is w p / (1 - p) / n, without the log(1 - p) term
    assert grad[0, 1].item() == pytest.approx(1.0 * 0.2 / 0.8 / 4, rel=1e-5)
    assert grad[1, 0].item() == pytest.approx(0.5 * 0.4 / 0.6 / 4, rel=1e-5)
    assert grad[0, 0].item() == pytest.approx(-0.5 / 0.9 / 4, rel=1e-5)


def test_weighted_asymmetric_loss_edges():
    loss = WeightedAsymmetricLoss()
    # clamped logarithm: p = 0 for a positive gives -log(1e-8), not inf
    assert loss(torch.tensor([[0.0]]), torch.tensor([[1]])).item() == pytest.approx(
        -math.log(1e-8), rel=1e-6)
    nothing_known = torch.tensor([[NAN, 0.3]], requires_grad=True)
    value = loss(nothing_known, torch.tensor([[-1, -1]]))
    value.backward()
    assert value.item() == 0 and torch.equal(nothing_known.grad, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="weight"):
        WeightedAsymmetricLoss(torch.ones(4))(torch.zeros(2, 3), torch.zeros(2, 3))


def test_class_weights_by_hand():
    labels = torch.tensor([[1, 0, -1], [1, 1, 0], [0, -1, 0], [1, 0, 1]])
    # positive rates 3/4, 1/3, 1/3  ->  1/rate = 4/3, 3, 3, normalised to sum to 3
    raw = torch.tensor([4 / 3, 3.0, 3.0])
    weights = au_class_weights(labels)
    assert torch.allclose(weights, raw / raw.sum() * 3)
    assert weights.sum().item() == pytest.approx(3.0)
    # an AU without positives keeps a finite weight (counted as one positive)
    assert torch.isfinite(au_class_weights(torch.tensor([[0, 1], [0, 1]]))).all()
    with pytest.raises(ValueError, match="labels"):
        au_class_weights(torch.zeros(3))


def test_relation_loss_and_total():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [5.0, 5.0, 5.0, 5.0]],
                          requires_grad=True)
    edge_y = torch.tensor([0, 3, -1])
    by_hand = -(math.log(math.exp(2) / (math.exp(2) + 3)) + math.log(math.e / (math.e + 3))) / 2
    assert relation_loss(logits, edge_y).item() == pytest.approx(by_hand, rel=1e-6)
    unknown = relation_loss(logits, torch.full((3,), -1))
    unknown.backward()
    assert unknown.item() == 0 and torch.equal(logits.grad, torch.zeros(3, 4))

    probs, target = torch.tensor([[0.9, 0.2]]), torch.tensor([[1, 0]])
    total = MEFLLoss(lam=0.5)(probs, target, logits, edge_y)
    assert total.item() == pytest.approx(
        WeightedAsymmetricLoss()(probs, target).item() + 0.5 * by_hand, rel=1e-6)
    assert MEFLLoss()(probs, target).item() == WeightedAsymmetricLoss()(probs, target).item()
    with pytest.raises(ValueError, match="edge_head=True"):
        MEFLLoss(lam=0.5)(probs, target)
    with pytest.raises(ValueError, match="lam"):
        MEFLLoss(lam=-1.0)


def test_metrics_against_confusion_by_hand():
    metrics = AUMetrics(4)
    # AU0: TP TP FP FN TN        AU1: TN TN FP (unknown) (NaN prob)
    # AU2: unknown everywhere    AU3: TP FN FN TN TN (0.5 is positive)
    metrics.update(torch.tensor([[0.9, 0.1, 0.7, 0.5], [0.6, 0.2, 0.1, 0.4]]),
                   torch.tensor([[1, 0, -1, 1], [1, 0, -1, 1]]))
    metrics.update(torch.tensor([[0.8, 0.55, 0.3, 0.2], [0.3, 0.9, 0.9, 0.0],
                                 [0.1, NAN, 0.9, 0.1]]),
                   torch.tensor([[0, 0, -1, 1], [1, -1, -1, 0], [0, 1, -1, 0]]))
    assert metrics.tp.tolist() == [2, 0, 0, 1]
    assert metrics.fp.tolist() == [1, 1, 0, 0]
    assert metrics.fn.tolist() == [1, 0, 0, 2]
    assert metrics.tn.tolist() == [1, 2, 0, 2]
    result = metrics.compute()
    f1 = [2 * 2 / (4 + 1 + 1), 0.0, NAN, 2 * 1 / (2 + 0 + 2)]
    assert torch.allclose(result["f1"], torch.tensor(f1, dtype=torch.float64) * 100,
                          equal_nan=True)
    assert result["mean_f1"] == pytest.approx((f1[0] + f1[1] + f1[3]) / 3 * 100)
    accuracy = [3 / 5, 2 / 3, 3 / 5]
    assert result["accuracy"] == pytest.approx(sum(accuracy) / 3 * 100)

    metrics.reset()
    assert metrics.tp.sum() == 0 and math.isnan(metrics.compute()["mean_f1"])
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        metrics.update(torch.zeros(2, 3), torch.zeros(2, 3))
