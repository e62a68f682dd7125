"""Learning-rate schedules stepped once per optimizer step, resumable through their
``state_dict``."""
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

LR_SCHEDULES = ("warmup-cosine", "constant")


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                           warmup_steps: int = 0, final_fraction: float = 0.0) -> LambdaLR:
    r"""A linear warm-up over ``warmup_steps`` steps, then a cosine decay to
    ``final_fraction`` of the base learning rate at ``total_steps``:

    .. math::
        \eta_t = \eta \cdot \begin{cases} (t + 1) / W & t < W \\
        f + (1 - f)\, \tfrac{1}{2} \big(1 + \cos(\pi \tfrac{t - W}{T - W})\big) & t \geq W
        \end{cases}

    Step it after every ``optimizer.step()``; save and restore its ``state_dict`` (with the
    optimizer's) to resume exactly.

    Args:
        optimizer (torch.optim.Optimizer): The optimizer whose learning rates it sets.
        total_steps (int): :math:`T`, the steps of the whole run.
        warmup_steps (int): :math:`W`. (default: :obj:`0`)
        final_fraction (float): :math:`f`. (default: :obj:`0.0`)
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps: expected a positive int, got {total_steps!r}")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps: expected an int in [0, {total_steps}], got "
                         f"{warmup_steps!r}")
    if not 0.0 <= final_fraction <= 1.0:
        raise ValueError(f"final_fraction: expected a value in [0, 1], got {final_fraction}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
