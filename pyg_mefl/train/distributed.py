"""Training on several processes with ``torch.distributed`` (DDP, launched by ``torchrun``): the
start-up from torchrun's environment, loaders that give each process its shard of every global
batch, synchronised norms, the loss of the global batch, reductions and rank-0 output.

With one process every function here is the identity (or plain single-process behaviour), so
:func:`~pyg_mefl.train.fit` calls them unconditionally."""
import os
from datetime import timedelta
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Module
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from ..nn.norm import SlotBatchNorm
from ..nn.sync_norm import SyncedBatchNorm
from .checkpoints import rng_state
from .losses import MEFLLoss, relation_loss
from .metrics import AUMetrics

# How long a process waits in a collective for the others: long enough for rank 0 to write a
# checkpoint or evaluate, short enough that a lost peer never hangs a job for good.
DEFAULT_TIMEOUT = timedelta(minutes=10)


def world_size() -> int:
    """Number of processes of the run (``1`` without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (``0`` without ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this process writes the run's files and logs (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (nothing with one)."""
    if world_size() > 1:
        dist.barrier()


def init_distributed(device: str = "cpu",
                     timeout: timedelta = DEFAULT_TIMEOUT) -> torch.device:
    r"""Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for a CUDA ``device``,
    gloo otherwise. Without torchrun (or with one process) nothing is started.

    Args:
        device (str): ``"cpu"`` or ``"cuda"``; each process then takes ``cuda:LOCAL_RANK``.
        timeout (datetime.timedelta): How long a collective waits for a lost process before it
            raises (instead of hanging).

    Returns:
        This process's device.
    """
    device = torch.device(device)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes < 1:
        raise ValueError(f"WORLD_SIZE: expected a positive number of processes, got {processes}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if processes > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return device


def close_distributed() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedBatchSampler(Sampler[List[int]]):
    r"""Each process's shard of every global batch: ``sampler``'s indices are grouped into
    global batches of ``batch_size`` exactly as a single-process ``DataLoader`` groups them, and
    process ``rank`` of ``world_size`` takes its contiguous slice of each (sizes differ by one at
    most). With the same seed, runs on any number of processes see the same global batches in
    the same order.

    Args:
        sampler (torch.utils.data.Sampler): Order of the items (e.g. a ``RandomSampler`` with a
            seeded ``generator``, identical in every process).
        batch_size (int): The global batch size.
        drop_last (bool): Drop a last, smaller global batch.
        rank (int), world_size (int): This process and the number of processes.
        skip_empty (bool): Skip the slices that are empty (evaluation, where processes need not
            step together); otherwise every process must get one item of every global batch at
            least, which the constructor checks.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, skip_empty: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.rank, self.world_size, self.skip_empty = rank, world_size, skip_empty
        last = len(sampler) % batch_size if not drop_last else 0
        smallest = min(batch_size, last) if last else batch_size
        if not skip_empty and smallest < world_size:
            raise ValueError(
                f"batch_size: a global batch of {smallest} items cannot give each of the "
                f"{world_size} processes one ({len(sampler)} items in batches of {batch_size}); "
                f"choose a batch size for which every global batch holds {world_size} items at "
                f"least, or drop the last batch")

    @property
    def generator(self) -> Optional[torch.Generator]:
        """The shuffling generator of the underlying sampler (:obj:`None` if it has none)."""
        return getattr(self.batches.sampler, "generator", None)

    def _slice(self, size: int) -> slice:
        share, extra = divmod(size, self.world_size)
        start = self.rank * share + min(self.rank, extra)
        return slice(start, start + share + (self.rank < extra))

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.batches:
            shard = batch[self._slice(len(batch))]
            if shard or not self.skip_empty:
                yield shard

    def __len__(self) -> int:
        if not self.skip_empty:
            return len(self.batches)
        items, size = len(self.batches.sampler), self.batches.batch_size
        sizes = [size] * (items // size)
        if items % size and not self.batches.drop_last:
            sizes.append(items % size)
        return sum(1 for n in sizes if self._slice(n).stop > self._slice(n).start)


def shard_loader(loader: DataLoader, training: bool) -> DataLoader:
    """``loader`` with each process reading its shard of every global batch
    (:class:`ShardedBatchSampler`); ``loader`` itself with one process. The shuffling generator
    of a training loader is set to rank 0's state, so that every process shuffles alike.

    Raises:
        ValueError: the loader has no ``batch_size`` (a custom batch sampler), shuffles without
            a ``generator``, or has a global batch too small for the processes.
    """
    if world_size() == 1 or isinstance(loader.batch_sampler, ShardedBatchSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError("loader: under torch.distributed fit() shards global batches of "
                         "loader.batch_size; give a DataLoader with a batch_size, not a custom "
                         "batch_sampler")
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler):
        if sampler.generator is None:
            raise ValueError("loader: under torch.distributed every process must shuffle "
                             "alike: give the DataLoader a generator, e.g. "
                             "generator=torch.Generator().manual_seed(seed)")
        states = [sampler.generator.get_state()]
        dist.broadcast_object_list(states, src=0)
        sampler.generator.set_state(states[0])
    batches = ShardedBatchSampler(sampler, loader.batch_size, loader.drop_last, rank(),
                                  world_size(), skip_empty=not training)
    # the same generator: a DataLoader draws its workers' base seed from it before shuffling
    return DataLoader(loader.dataset, batch_sampler=batches, collate_fn=loader.collate_fn,
                      generator=loader.generator,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn,
                      persistent_workers=loader.persistent_workers)


def loader_generator(loader: DataLoader) -> Optional[torch.Generator]:
    """The generator that shuffles ``loader`` (:obj:`None` if none)."""
    return loader.generator if loader.generator is not None else \
        getattr(loader.batch_sampler, "generator", None)


def synchronise_norms(module: Module, process_group=None) -> Module:
    """Make every batch norm of ``module`` use the statistics of the batch of all processes of
    ``process_group`` (default: all), as :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`
    does, on CPUs too: each :class:`~pyg_mefl.nn.SlotBatchNorm` (AU-node, edge-slot and AFG
    norms) gets the group, and each ``BatchNorm1d/2d/3d`` (linear blocks, backbones) becomes a
    :class:`~pyg_mefl.nn.sync_norm.SyncedBatchNorm` holding the same parameters and buffers.
    Returns ``module`` (changed in place unless it is itself a batch norm)."""
    group = process_group if process_group is not None else dist.group.WORLD
    if isinstance(module, SlotBatchNorm):
        module.process_group = group
        return module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncedBatchNorm):
        return SyncedBatchNorm.from_batch_norm(module, group)
    if isinstance(module, SyncedBatchNorm):
        module.process_group = group
        return module
    for name, child in module.named_children():
        converted = synchronise_norms(child, group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def distribute_model(model: Module, device: torch.device) -> Module:
    """``model`` for training on the process group: norms synchronised
    (:func:`synchronise_norms`) and gradients averaged by :class:`DistributedDataParallel`. The
    buffers are not broadcast: synchronised norms keep them equal in every process."""
    synchronise_norms(model)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Tensor) -> Tensor:
    """The sum of ``values`` over the processes (``values`` itself with one process)."""
    if world_size() == 1:
        return values
    reduced = values.detach().to(_collective_device(), copy=True)
    dist.all_reduce(reduced)
    return reduced.to(values.device)


def global_batch_loss(loss_fn: MEFLLoss, probs: Tensor, target: Tensor,
                      edge_logits: Optional[Tensor] = None,
                      edge_y: Optional[Tensor] = None) -> Tensor:
    r"""This process's part of the loss of the global batch, scaled so that DDP's average of
    the processes' gradients is the gradient of ``loss_fn`` on the whole global batch.

    :class:`MEFLLoss` averages over the known labels (and known edge relations), whose number
    differs between shards. With :math:`P` processes, :math:`k_r` known labels in shard
    :math:`r` and :math:`K = \sum_r k_r`, process :math:`r` returns
    :math:`P \frac{k_r}{K} \ell_r` for each term's mean :math:`\ell_r`, so that
    :math:`\frac{1}{P}\sum_r` of it is the mean over the global batch. One collective of two
    numbers. With one process: ``loss_fn(...)``.
    """
    if world_size() == 1:
        return loss_fn(probs, target, edge_logits, edge_y)
    known = [((target >= 0) & ~torch.isnan(probs)).sum()]
    if loss_fn.lam != 0:
        if edge_logits is None or edge_y is None:
            return loss_fn(probs, target, edge_logits, edge_y)  # raises its own error
        known.append((edge_y >= 0).sum())
    local = torch.stack(known).double()
    share = world_size() * local / all_reduce_sum(local).clamp(min=1)
    loss = loss_fn.au_loss(probs, target) * share[0].to(probs.dtype)
    if loss_fn.lam == 0:
        return loss
    return loss + loss_fn.lam * relation_loss(edge_logits, edge_y) * share[1].to(probs.dtype)


def reduce_metrics(metrics: AUMetrics) -> AUMetrics:
    """Sum ``metrics``' confusion counts over the processes (in place), so that F1 and accuracy
    are those of the whole evaluation set, not an average of the processes' scores."""
    counts = all_reduce_sum(torch.stack([metrics.tp, metrics.fp, metrics.fn, metrics.tn]))
    metrics.tp, metrics.fp, metrics.fn, metrics.tn = counts.unbind(0)
    return metrics


def gather_rng_states(generator: Optional[torch.Generator] = None) -> List[dict]:
    """Every process's :func:`~pyg_mefl.train.checkpoints.rng_state`, in rank order (a list of
    one with one process)."""
    state = rng_state(generator)
    if world_size() == 1:
        return [state]
    states = [None] * world_size()
    dist.all_gather_object(states, state)
    return states
