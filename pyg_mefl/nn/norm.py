"""Batch normalisation with one statistic per AU slot (docs/math.md §4-5)."""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module, Parameter
from torch_geometric.nn.norm import BatchNorm
from torch_geometric.utils import scatter

from .sync_norm import gather_moments, is_syncing

Moments = Tuple[Tensor, Tensor, int]


class SlotBatchNorm(Module):
    r"""Batch normalisation whose statistics are kept per *slot* (an AU node, or an AU pair)
    rather than per channel, as the published MEFL code normalises ``[B, N, C]`` with
    ``BatchNorm1d(N)`` and ``[B, N², D, C]`` with ``BatchNorm2d(N²)``.

    Each row of the input belongs to the slot ``slot[row]``. In training, slot :math:`s` is
    normalised with the mean and biased variance of all rows of slot :math:`s` in the batch

    .. math::
        \mathrm{SBN}(\mathbf{x}_r) = \frac{\mathbf{x}_r - \mu_{s(r)}}
        {\sqrt{\sigma^2_{s(r)} + \epsilon}} \gamma_{s(r)} + \beta_{s(r)},

    and the running statistics of the slots present are updated exactly as
    :class:`torch.nn.BatchNorm1d` does (momentum, unbiased running variance). Unlike PyG's
    :class:`~torch_geometric.nn.norm.BatchNorm` (one statistic per channel), this reproduces
    the published per-slot layers, and the slots a batch lacks keep their statistics.

    Args:
        num_slots (int): Number of slots.
        num_channels (int, optional): If given, statistics are kept per (slot, channel) with the
            channel as the last input dimension (one ``BatchNorm1d(C)`` per AU). If :obj:`None`,
            one mean and variance per slot over all other dimensions, with a scalar affine.
        eps (float): Added to the variance. (default: :obj:`1e-5`)
        momentum (float, optional): Running-statistics momentum; :obj:`None` for a cumulative
            average. (default: :obj:`0.1`)
        affine (bool): Learn :math:`\gamma, \beta`. (default: :obj:`True`)
        track_running_stats (bool): Keep running statistics for evaluation.
            (default: :obj:`True`)
        process_group (optional): Share the training statistics of each slot with the
            processes of this ``torch.distributed`` group, as :class:`torch.nn.SyncBatchNorm`
            does (one collective per step; :func:`~pyg_mefl.train.synchronise_norms` sets it
            under DDP). :obj:`None`: this process's batch only. (default: :obj:`None`)

    Shapes:
        - **input:** ``x`` :math:`(M, *)`, ``slot`` :math:`(M)` with values in
          ``[0, num_slots)``
        - **output:** :math:`(M, *)`
    """

    def __init__(self, num_slots: int, num_channels: Optional[int] = None, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None):
        super().__init__()
        self.num_slots = num_slots
        self.process_group = process_group
        self.num_channels = num_channels
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        shape = (num_slots,) if num_channels is None else (num_slots, num_channels)
        if affine:
            self.weight = Parameter(torch.empty(shape))
            self.bias = Parameter(torch.empty(shape))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(shape))
            self.register_buffer("running_var", torch.ones(shape))
            self.register_buffer("num_batches_tracked", torch.zeros(num_slots, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            torch.nn.init.ones_(self.weight)
            torch.nn.init.zeros_(self.bias)

    def row_moments(self, x: Tensor) -> Moments:
        """Per-row ``(mean, sum of squared deviations, element count)`` of ``x``, reduced over
        every dimension but the row (and the channel, with ``num_channels``)."""
        rows = x.reshape(x.size(0), -1) if self.num_channels is None else \
            x.reshape(x.size(0), -1, x.size(-1))
        mean = rows.mean(dim=1)
        m2 = (rows - mean.unsqueeze(1)).square().sum(dim=1)
        return mean, m2, rows.size(1)

    def forward(self, x: Tensor, slot: Tensor, moments: Optional[Moments] = None) -> Tensor:
        r"""
        Args:
            x (torch.Tensor): Rows to normalise.
            slot (torch.Tensor): Slot of each row.
            moments (tuple, optional): Per-row ``(mean, M2, count)`` that define the batch
                statistics instead of ``x`` itself: lets a caller normalise a token-average of a
                tensor it never builds (BN is affine per slot, so it commutes with the average).
        """
        shift, var = self._statistics(x, slot, moments)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        view = (-1,) + (1,) * (x.dim() - 1) if self.num_channels is None else \
            (x.size(0),) + (1,) * (x.dim() - 2) + (x.size(-1),)
        centred = x - shift[slot].view(view)
        if not self.affine:
            return centred * scale[slot].view(view)
        return torch.addcmul(self.bias[slot].view(view), centred, scale[slot].view(view))

    def cyclic(self, x: Tensor) -> Tensor:
        r"""``forward`` for rows that cycle through the slots in order, given as
        ``x`` :math:`(R, S, *)` with the slot on dimension 1 (a batch of complete AU graphs:
        ``[faces, N², C]`` edges, ``[faces, N, C]`` nodes; with ``num_channels``, ``x`` is
        :math:`(R, S, C)`). Runs as torch's fused batch norm, which is what the published
        layers call: one pass, and autograd keeps only the input. Falls back to :meth:`forward`
        where that cannot hold the statistics (``momentum=None``, synchronised statistics)."""
        num_rows, num_slots = x.size(0), x.size(1)
        # BN's channel: the slot, or the (slot, channel) pair
        flat = x.reshape(num_rows, num_slots, -1) if self.num_channels is None else \
            x.reshape(num_rows, -1)
        if self.momentum is None or (self.training and is_syncing(self.process_group)) or \
                flat.numel() <= flat.size(1):  # torch's BN refuses one value per channel
            slot = torch.arange(num_slots, device=x.device).repeat(num_rows)
            rows = x.reshape((num_rows * num_slots,) + x.shape[2:])
            return self.forward(rows, slot).view_as(x)
        use_batch = self.training or not self.track_running_stats
        track = self.training and self.track_running_stats
        out = torch.nn.functional.batch_norm(
            flat, self.running_mean.view(-1) if self.track_running_stats else None,
            self.running_var.view(-1) if self.track_running_stats else None,
            None if self.weight is None else self.weight.view(-1),
            None if self.bias is None else self.bias.view(-1), use_batch, self.momentum,
            self.eps)
        if track:
            self.num_batches_tracked.add_(1)
        return out.view_as(x)

    def inference_affine(self) -> Tuple[Tensor, Tensor]:
        """``(scale, shift)`` of evaluation mode, ``x * scale + shift`` per slot (and channel),
        from the running statistics: lets a caller apply the norm in place."""
        return self._affine(self.running_mean, self.running_var)

    def slot_affine(self, x: Tensor, slot: Tensor,
                    moments: Optional[Moments] = None) -> Tuple[Tensor, Tensor]:
        r"""``(scale, shift)`` per slot (and channel) such that :meth:`forward` is
        ``x * scale[slot] + shift[slot]``: :math:`\gamma_s / \sqrt{\sigma^2_s + \epsilon}` and
        :math:`\beta_s - \mu_s \gamma_s / \sqrt{\sigma^2_s + \epsilon}` with the statistics
        :meth:`forward` would use (in training those of ``x`` or ``moments``, and the running
        statistics are updated as :meth:`forward` updates them). Lets a caller apply the norm
        to a linear image of ``x`` that it computes more cheaply than from the normalised rows:
        :math:`\mathrm{SBN}(\mathbf{x}_r) \mathbf{W}^{\top} = \mathrm{scale}_s\,
        \mathbf{x}_r \mathbf{W}^{\top} + \mathrm{shift}_s \mathbf{W} \mathbf{1}`."""
        return self._affine(*self._statistics(x, slot, moments))

    def _statistics(self, x: Tensor, slot: Tensor,
                    moments: Optional[Moments]) -> Tuple[Tensor, Tensor]:
        """Per-slot mean and variance that normalise ``x``: batch or running statistics."""
        if self.num_channels is not None and x.size(-1) != self.num_channels:
            raise ValueError(f"SlotBatchNorm: expected {self.num_channels} channels in the last "
                             f"dimension, got input of shape {tuple(x.shape)}")
        if self.training or not self.track_running_stats:
            return self._batch_statistics(*(moments or self.row_moments(x)), slot)
        return self.running_mean, self.running_var

    def _affine(self, mean: Tensor, var: Tensor) -> Tuple[Tensor, Tensor]:
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -mean * scale
        return scale, shift if not self.affine else shift + self.bias

    def _batch_statistics(self, row_mean: Tensor, row_m2: Tensor, row_count: int,
                          slot: Tensor) -> Tuple[Tensor, Tensor]:
        # Chan et al.'s pairwise combination of per-row moments: stable without a second pass.
        rows = scatter(torch.ones_like(slot, dtype=row_mean.dtype), slot, 0, self.num_slots, "sum")
        rows = rows.view((-1,) + (1,) * (row_mean.dim() - 1))
        mean = scatter(row_mean, slot, 0, self.num_slots, "sum") / rows.clamp(min=1)
        deviation = (row_mean - mean[slot]).square() * row_count
        count = rows * row_count
        m2 = scatter(row_m2 + deviation, slot, 0, self.num_slots, "sum")
        if self.training and is_syncing(self.process_group):  # every process's batch
            count, mean, m2 = gather_moments(count.flatten(), mean, m2, self.process_group)
            count = count.view(rows.shape)
        var = m2 / count.clamp(min=1)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count, count.flatten() > 0)
        return mean, var

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor,
                              present: Tensor) -> None:
        self.num_batches_tracked.add_(present.long())
        if self.momentum is None:
            factor = 1.0 / self.num_batches_tracked.clamp(min=1).to(self.running_mean.dtype)
        else:
            factor = torch.full_like(present, self.momentum, dtype=self.running_mean.dtype)
        factor = torch.where(present, factor, torch.zeros_like(factor))
        factor = factor.view((-1,) + (1,) * (mean.dim() - 1))
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)

    def extra_repr(self) -> str:
        channels = "" if self.num_channels is None else f", num_channels={self.num_channels}"
        return (f"{self.num_slots}{channels}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


NORMS = (None, "batch", "slot")


def make_norm(norm: Optional[str], channels: int, num_slots: Optional[int], what: str
              ) -> Optional[Module]:
    """The node or edge norm a graph layer asks for by name (one of :data:`NORMS`): none, PyG's
    per-channel ``BatchNorm``, or a :class:`SlotBatchNorm` of ``num_slots`` (named ``what``)."""
    if norm is None:
        return None
    if norm == "batch":
        return BatchNorm(channels)
    if num_slots is None:
        raise ValueError(f"norm='slot' needs {what} (the number of slots)")
    return SlotBatchNorm(num_slots)


def apply_norm(norm: Optional[Module], x: Tensor, slot: Optional[Tensor]) -> Tensor:
    """``norm`` (from :func:`make_norm`) on rows ``x`` whose slots are ``slot``."""
    if norm is None:
        return x
    return norm(x, slot) if isinstance(norm, SlotBatchNorm) else norm(x)
