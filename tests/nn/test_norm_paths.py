"""The fast path of ``pyg_mefl/nn/norm.py``: ``SlotBatchNorm.cyclic`` (torch's fused batch norm
when rows cycle through the slots) against ``SlotBatchNorm.forward`` with explicit slots
(float64, values, gradients and running statistics).
No timing here: see `python -m benchmarks head`.
"""
import pytest
import torch

from paths_helpers import DTYPE, _grads
from pyg_mefl import SlotBatchNorm


@pytest.mark.parametrize("channels", [None, 4], ids=["per-slot", "per-slot-channel"])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_slot_norm_cyclic_matches_forward(channels, momentum, training):
    generator = torch.Generator().manual_seed(14)
    num_rows, num_slots = 3, 5
    shape = (num_rows, num_slots, 4) if channels else (num_rows, num_slots, 2, 3)
    x = (torch.randn(shape, dtype=DTYPE, generator=generator) * 3 + 1).requires_grad_()
    norms = [SlotBatchNorm(num_slots, channels, momentum=momentum).to(DTYPE).train(training)
             for _ in range(2)]
    with torch.no_grad():
        norms[0].weight.uniform_(0.5, 1.5, generator=generator)
        norms[0].bias.normal_(generator=generator)
        norms[0].running_mean.normal_(generator=generator)
        norms[0].running_var.uniform_(0.5, 1.5, generator=generator)
    norms[1].load_state_dict(norms[0].state_dict())
    slot = torch.arange(num_slots).repeat(num_rows)
    fast = norms[0].cyclic(x)
    generic = norms[1](x.reshape((-1,) + shape[2:]), slot).view(shape)
    torch.testing.assert_close(fast, generic, rtol=1e-10, atol=1e-10)
    for got, want in zip(_grads(fast, [x] + list(norms[0].parameters())),
                         _grads(generic, [x] + list(norms[1].parameters()))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for got, want in zip(norms[0].buffers(), norms[1].buffers()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
