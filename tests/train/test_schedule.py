"""The warm-up and cosine learning-rate schedule against its formula, and its exact resume."""
import math

import pytest
import torch

from pyg_mefl.train import warmup_cosine_schedule


def _expected(step, total, warmup, base, final):
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / (total - warmup)
    return base * (final + (1 - final) * (1 + math.cos(math.pi * progress)) / 2)


def _optimizer(lr=0.1):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=lr)


@pytest.mark.parametrize("total,warmup,final", [(23, 5, 0.0), (10, 0, 0.1), (7, 7, 0.0)])
def test_learning_rates_follow_warmup_then_cosine(total, warmup, final):
    optimizer = _optimizer()
    scheduler = warmup_cosine_schedule(optimizer, total, warmup, final)
    for step in range(total):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(
            _expected(step, total, warmup, 0.1, final)), step
        optimizer.step()
        scheduler.step()


def test_resuming_from_state_dicts_continues_the_same_rates():
    straight_opt = _optimizer()
    straight = warmup_cosine_schedule(straight_opt, 20, 4)
    rates = []
    for _ in range(20):
        rates.append(straight_opt.param_groups[0]["lr"])
        straight_opt.step()
        straight.step()
    first_opt = _optimizer()
    first = warmup_cosine_schedule(first_opt, 20, 4)
    for _ in range(9):
        first_opt.step()
        first.step()
    state = {"optimizer": first_opt.state_dict(), "scheduler": first.state_dict()}
    resumed_opt = _optimizer()
    resumed = warmup_cosine_schedule(resumed_opt, 20, 4)
    resumed_opt.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    for step in range(9, 20):
        assert resumed_opt.param_groups[0]["lr"] == rates[step]
        resumed_opt.step()
        resumed.step()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine_schedule(_optimizer(), 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_schedule(_optimizer(), 5, 6)
    with pytest.raises(ValueError, match="final_fraction"):
        warmup_cosine_schedule(_optimizer(), 5, 1, 1.5)
