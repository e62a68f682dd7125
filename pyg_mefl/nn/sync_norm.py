"""Batch statistics shared by the processes of a distributed run: the one collective of a
synchronised norm layer, and a per-channel batch norm that uses it on CPUs (gloo) and GPUs."""
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(Function):
    """A sum over the processes whose gradient is the sum of the processes' gradients: the
    output is shared, so every process's loss depends on every process's input."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, group=group)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def gather_moments(count: Tensor, mean: Tensor, m2: Tensor,
                   group: Any) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Combine per-process batch moments into those of the batch of all processes of
    ``group``, differentiably, with one collective.

    Each process contributes, per slot :math:`s`, its element count :math:`n_s^{(r)}`, mean
    :math:`\mu_s^{(r)}` and sum of squared deviations :math:`M_s^{(r)}` (zeros where it has no
    element of the slot). The moments of every process are packed into one flat tensor, placed
    in the process's row of a zero ``[world_size, L]`` buffer and summed across processes (an
    all-gather by all-reduce, whose backward sums the gradients), then combined as Chan et al.

    .. math::
        n_s = \sum_r n_s^{(r)}, \quad \mu_s = \frac{1}{n_s}\sum_r n_s^{(r)} \mu_s^{(r)}, \quad
        M_s = \sum_r M_s^{(r)} + n_s^{(r)} \big(\mu_s^{(r)} - \mu_s\big)^2,

    which stays accurate when the mean is large against the spread (no raw second moments).

    Args:
        count (torch.Tensor): ``[S]`` element count per slot.
        mean (torch.Tensor): ``[S, *]`` per-slot mean.
        m2 (torch.Tensor): ``[S, *]`` per-slot sum of squared deviations from ``mean``.
        group: The process group.

    Returns:
        ``(count, mean, m2)`` of the union of the processes' batches, shaped as the inputs.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dtype = torch.promote_types(mean.dtype, torch.float32)  # counts must stay exact
    local = torch.cat([count.reshape(-1).to(dtype), mean.reshape(-1).to(dtype),
                       m2.reshape(-1).to(dtype)])
    size = local.numel()
    rows = torch.nn.functional.pad(local, (rank * size, (world - 1 - rank) * size))
    rows = _AllReduceSum.apply(rows, group).view(world, size)
    slots, moments = count.numel(), mean.numel()
    counts = rows[:, :slots].view((world,) + count.shape + (1,) * (mean.dim() - count.dim()))
    means = rows[:, slots:slots + moments].view((world,) + mean.shape)
    m2s = rows[:, slots + moments:].view((world,) + mean.shape)
    total = counts.sum(dim=0)
    combined_mean = (counts * means).sum(dim=0) / total.clamp(min=1)
    combined_m2 = (m2s + counts * (means - combined_mean).square()).sum(dim=0)
    return (total.reshape(count.shape).to(count.dtype), combined_mean.to(mean.dtype),
            combined_m2.to(m2.dtype))


def is_syncing(group: Any) -> bool:
    """Whether a norm layer given ``group`` shares its statistics: a group is set, the
    distributed package is initialised and the group has more than one process."""
    return group is not None and dist.is_available() and dist.is_initialized() and \
        dist.get_world_size(group) > 1


class SyncedBatchNorm(_BatchNorm):
    r"""Per-channel batch normalisation (:class:`torch.nn.BatchNorm1d`/``2d``/``3d``) whose
    training statistics are those of the batch of all processes of ``process_group``, on CPUs
    (gloo) as on GPUs: as :class:`torch.nn.SyncBatchNorm`, which runs on GPUs only. Outputs,
    gradients and running statistics equal one process on the concatenated batch; each layer
    and step costs one collective of :math:`3C` values per process (:func:`gather_moments`).
    Outside training, or without a process group of several processes, it is a plain batch
    norm. Its state dict is the batch norm's, so checkpoints move freely between the two.

    .. math::
        y = \frac{x - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} \gamma_c + \beta_c

    Args:
        num_features (int): Channels :math:`C` (dimension 1 of the input).
        eps, momentum, affine, track_running_stats: As :class:`torch.nn.BatchNorm1d`.
        process_group (optional): The group to synchronise over
            (e.g. ``torch.distributed.group.WORLD``; :obj:`None`: no synchronisation).

    Shapes:
        - **input:** :math:`(B, C, *)`
        - **output:** :math:`(B, C, *)`
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncedBatchNorm: expected an input (B, C, *), got shape "
                             f"{tuple(input.shape)}")

    @classmethod
    def from_batch_norm(cls, norm: _BatchNorm, process_group: Any) -> "SyncedBatchNorm":
        """A :class:`SyncedBatchNorm` that shares ``norm``'s parameters and buffers (an
        optimizer built on ``norm`` keeps training it)."""
        synced = cls(norm.num_features, norm.eps, norm.momentum, norm.affine,
                     norm.track_running_stats, process_group)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(synced, name, getattr(norm, name))
        synced.train(norm.training)
        return synced

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and is_syncing(self.process_group)):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        view = (1, -1) + (1,) * (input.dim() - 2)
        mean = input.mean(dim=dims)
        m2 = (input - mean.view(view)).square().sum(dim=dims)
        count = input.new_full((1,), input.numel() // max(input.size(1), 1))
        count, mean, m2 = gather_moments(count, mean.unsqueeze(0), m2.unsqueeze(0),
                                         self.process_group)
        mean, m2 = mean.squeeze(0), m2.squeeze(0)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), m2.detach(), count)
        scale = torch.rsqrt(m2 / count.clamp(min=1) + self.eps)
        if self.affine:
            return torch.addcmul(self.bias.view(view), input - mean.view(view),
                                 (scale * self.weight).view(view))
        return (input - mean.view(view)) * scale.view(view)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, m2: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        unbiased = m2 / (count - 1).clamp(min=1)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
