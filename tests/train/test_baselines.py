"""The ridge probe against its closed form, the baselines against constant answers, and the
automatic token normalisation on data that need opposite choices."""
import pytest
import torch
import torch.nn.functional as F

from pyg_mefl.train import AUMetrics, ridge_probe, token_mlp_probe
from pyg_mefl.train.token_norm_choice import AUTO_CANDIDATES, choose_token_norm


def _f1(scores, target, thresholds=0.5):
    metrics = AUMetrics(target.size(1), thresholds)
    metrics.update(scores, target)
    return metrics.compute()["mean_f1"]


def _faces(num_faces, local, seed=0, num_tokens=6, channels=8, num_aus=3):
    """Each AU moves one token (local) or every token (global) along its own direction; every
    face has an offset shared by its tokens, as large as the local evidence or small."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(num_faces, num_aus, generator=generator) < 0.3).long()
    directions = F.normalize(torch.randn(num_aus, channels, generator=generator), dim=1)
    gains = torch.zeros(num_aus, num_tokens)
    if local:
        gains[torch.arange(num_aus), torch.arange(num_aus)] = 2.0
    else:
        gains[:] = 0.7
    evidence = torch.einsum("fa,ad,ac->fdc", labels.float(), gains, directions)
    offset = (1.5 if local else 0.1) * torch.randn(num_faces, 1, channels, generator=generator)
    noise = torch.randn(num_faces, num_tokens, channels, generator=generator)
    return evidence + offset + noise * (0.3 if local else 1.0), labels


def _splits(tokens, labels):
    cut = [0, int(0.6 * len(tokens)), int(0.8 * len(tokens)), len(tokens)]
    return [(tokens[a:b], labels[a:b]) for a, b in zip(cut, cut[1:])]


@pytest.mark.parametrize("num_faces,num_features", [(60, 5), (20, 45)])  # primal and dual
def test_ridge_probe_is_the_closed_form_solution(num_faces, num_features):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(num_faces + 30, num_features, generator=generator)
    y = (x[:, :2] + 0.5 * torch.randn(num_faces + 30, 2, generator=generator) > 0).long()
    y[4, 1] = -1  # unknown: the AU's training rate
    train_x, train_y = x[:num_faces], y[:num_faces]
    alpha = 0.3
    result = ridge_probe(train_x, train_y, x[num_faces:num_faces + 10], y[num_faces:num_faces + 10],
                         x[num_faces + 10:], alphas=[alpha])
    mean, std = train_x.double().mean(0), train_x.double().std(0)
    z = (train_x.double() - mean) / std
    known = train_y >= 0
    rate = (train_y.clamp(min=0) * known).sum(0).double() / known.sum(0)
    target = torch.where(known, train_y.double(), rate)
    weight = torch.linalg.solve(z.t() @ z + alpha * num_faces * torch.eye(num_features),
                                z.t() @ (target - target.mean(0)))
    expected = ((x[num_faces + 10:].double() - mean) / std) @ weight + target.mean(0)
    torch.testing.assert_close(result.scores, expected.float(), atol=1e-4, rtol=1e-4)


def test_baselines_beat_constant_answers_on_local_evidence():
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = _splits(*_faces(300, local=True))
    all_present = _f1(torch.ones(test_y.shape), test_y)
    ridge = ridge_probe(train_x.flatten(1), train_y, val_x.flatten(1), val_y, test_x.flatten(1))
    assert _f1(ridge.scores, test_y, ridge.thresholds) > all_present + 30
    centred = [x - x.mean(1, keepdim=True) for x in (train_x, val_x, test_x)]
    mlp = token_mlp_probe(centred[0], train_y, centred[1], val_y, centred[2], epochs=15)
    assert _f1(mlp.scores, test_y, mlp.thresholds) > all_present + 20


@pytest.mark.parametrize("local,expected", [(True, "center+channels"), (False, "channels")])
def test_auto_token_norm_centres_only_where_the_evidence_is_local(local, expected):
    (train_x, train_y), (val_x, val_y), _ = _splits(*_faces(300, local=local, seed=2))
    name, scores = choose_token_norm(train_x, train_y, val_x, val_y)
    assert name.removesuffix("+position") == expected, scores
    assert set(scores) == set(AUTO_CANDIDATES)


def test_auto_token_norm_adds_the_position_where_only_the_token_tells_the_aus_apart():
    # one direction for every AU, each AU on its own token, tokens without appearances: a
    # token-wise map pooled over the tokens sees the same face for every AU unless each token
    # carries its index
    generator = torch.Generator().manual_seed(3)
    num_faces, num_tokens, num_aus = 400, 6, 3
    labels = (torch.rand(num_faces, num_aus, generator=generator) < 0.3).long()
    direction = F.normalize(torch.randn(8, generator=generator), dim=0)
    evidence = torch.zeros(num_faces, num_tokens, 8)
    evidence[:, :num_aus] = 2.0 * labels.float()[:, :, None] * direction
    tokens = evidence + 0.3 * torch.randn(num_faces, num_tokens, 8, generator=generator)
    (train_x, train_y), (val_x, val_y), _ = _splits(tokens, labels)
    name, scores = choose_token_norm(train_x, train_y, val_x, val_y)
    assert name.endswith("+position"), scores
    without = max(score for key, score in scores.items() if not key.endswith("+position"))
    assert scores[name] > without + 20, scores
