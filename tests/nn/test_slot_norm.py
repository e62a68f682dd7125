"""SlotBatchNorm against torch's BatchNorm layers, which define the published per-slot norms."""
import pytest
import torch

from pyg_mefl import SlotBatchNorm


def _random_affine(ours, theirs, generator):
    with torch.no_grad():
        theirs.weight.copy_(torch.rand(theirs.weight.shape, generator=generator) + 0.5)
        theirs.bias.copy_(torch.randn(theirs.bias.shape, generator=generator))
        ours.weight.copy_(theirs.weight.view_as(ours.weight))
        ours.bias.copy_(theirs.bias.view_as(ours.bias))


@pytest.mark.parametrize("batch,slots,tokens,channels", [(3, 5, 1, 7), (2, 9, 4, 6), (1, 4, 3, 5)])
def test_scalar_slots_equal_batchnorm1d_and_2d(batch, slots, tokens, channels):
    """BatchNorm1d(N) on [B, N, C] and BatchNorm2d(N) on [B, N, D, C]: one statistic per slot."""
    generator = torch.Generator().manual_seed(batch * slots)
    x = torch.randn(batch, slots, tokens, channels, generator=generator) * 3 + 1
    theirs = torch.nn.BatchNorm2d(slots) if tokens > 1 else torch.nn.BatchNorm1d(slots)
    ours = SlotBatchNorm(slots)
    _random_affine(ours, theirs, generator)
    reference_input = x if tokens > 1 else x.squeeze(2)
    slot = torch.arange(slots).repeat(batch)
    for step in range(3):  # training steps update the running statistics
        out = ours(x.flatten(0, 1), slot).view_as(x)
        torch.testing.assert_close(out.view_as(reference_input), theirs(reference_input),
                                   rtol=1e-5, atol=1e-5)
        x = x * 1.1 + step
        reference_input = x if tokens > 1 else x.squeeze(2)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)
    assert ours.num_batches_tracked.tolist() == [3] * slots
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x.flatten(0, 1), slot).view_as(x).view_as(reference_input),
                               theirs(reference_input), rtol=1e-5, atol=1e-5)


def test_channel_slots_equal_one_batchnorm1d_per_slot():
    """The AFG's per-AU BatchNorm1d(C) over batch × tokens."""
    generator = torch.Generator().manual_seed(0)
    slots, batch, tokens, channels = 3, 4, 5, 6
    x = torch.randn(batch, slots, tokens, channels, generator=generator) * 2 - 1
    ours = SlotBatchNorm(slots, channels)
    theirs = [torch.nn.BatchNorm1d(channels) for _ in range(slots)]
    with torch.no_grad():
        for s, bn in enumerate(theirs):
            bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(channels, generator=generator))
            ours.weight[s] = bn.weight
            ours.bias[s] = bn.bias
    out = ours(x.flatten(0, 1), torch.arange(slots).repeat(batch)).view_as(x)
    for s, bn in enumerate(theirs):
        expected = bn(x[:, s].transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(out[:, s], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.running_var[s], bn.running_var, rtol=1e-5, atol=1e-6)


def test_absent_slots_keep_their_statistics_and_momentum_none_averages():
    norm = SlotBatchNorm(4, momentum=None)
    first, second = torch.randn(6, 3) + 2, torch.randn(6, 3) - 1
    slot = torch.tensor([0, 0, 1, 1, 2, 2])  # slot 3 never appears
    norm(first, slot)
    norm(second, slot)
    for s in range(3):
        rows = slot == s
        means = torch.stack([first[rows].mean(), second[rows].mean()])
        torch.testing.assert_close(norm.running_mean[s], means.mean())
    assert norm.running_mean[3] == 0 and norm.running_var[3] == 1
    assert norm.num_batches_tracked.tolist() == [2, 2, 2, 0]


def test_moments_give_the_same_statistics_as_the_rows():
    """Normalising a token-mean with the moments of the full rows equals normalising the rows
    and then averaging (BN is affine per slot)."""
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(10, 4, 6, generator=generator)
    slot = torch.randint(0, 3, (10,), generator=generator)
    full, pooled = SlotBatchNorm(3), SlotBatchNorm(3)
    expected = full(rows, slot).mean(dim=1)
    actual = pooled(rows.mean(dim=1), slot, moments=full.row_moments(rows))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled.running_var, full.running_var)


def test_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match="expected 5 channels"):
        SlotBatchNorm(2, 5)(torch.randn(3, 4), torch.tensor([0, 1, 0]))
