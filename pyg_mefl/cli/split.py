"""``torchrun --nproc_per_node=P -m pyg_mefl predict ...``: the inputs split across processes,
one CSV holding the rows of a one-process run.

Input files are dealt out in turn (file ``k`` to process ``k mod P``); a video is not split, so
one long video keeps one process busy. Each process writes its rows to ``<out>.part<rank>``;
when all are done, process 0 merges them in input order into ``<out>`` and removes the parts.
With CUDA each process takes the GPU of its local rank.
"""
import csv
import os
from datetime import timedelta
from typing import List, Sequence, Tuple

import torch
import torch.distributed as dist

from ..io.media import Source

# a process may wait this long for the others (one of them may have a long video)
WAIT_FOR_OTHERS = timedelta(days=7)


def world() -> Tuple[int, int]:
    """``(rank, processes)`` as torchrun sets them, ``(0, 1)`` without it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def join(device: torch.device) -> torch.device:
    """Join torchrun's process group (gloo: only counts and a barrier travel); this process's
    device (``cuda:LOCAL_RANK`` for CUDA)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=WAIT_FOR_OTHERS)
    return device


def share(sources: Sequence[Source], rank: int, processes: int) -> List[Source]:
    return [source for k, source in enumerate(sources) if k % processes == rank]


def part_path(out: str, rank: int) -> str:
    return f"{out}.part{rank}"


def gather(frames: int, faces: int, problems: list, shared_problems: list):
    """``(frames, faces, problems)`` of the whole run: the counts summed over the processes,
    the problems of all in input order (``shared_problems``, those of finding the inputs, once)."""
    counts = torch.tensor([frames, faces], dtype=torch.int64)
    dist.all_reduce(counts)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, [str(problem) for problem in problems])
    return (*counts.tolist(), [str(p) for p in shared_problems]
            + [line for lines in everyone for line in lines])


def merge(out: str, sources: Sequence[Source], processes: int) -> None:
    """Write ``out`` from the processes' parts, the rows of each input in input order."""
    parts = [open(part_path(out, rank), newline="") for rank in range(processes)]
    try:
        readers = [csv.reader(part) for part in parts]
        headers = [next(reader, None) for reader in readers]
        ahead = [next(reader, None) for reader in readers]
        with open(out, "w", newline="") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(headers[0])
            for k, source in enumerate(sources):
                rank = k % processes
                while ahead[rank] is not None and ahead[rank][0] == source.path:
                    writer.writerow(ahead[rank])
                    ahead[rank] = next(readers[rank], None)
    finally:
        for part in parts:
            part.close()
    for rank in range(processes):
        os.remove(part_path(out, rank))


def leave() -> None:
    """Wait for the others (process 0 merges the parts meanwhile), then leave the group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
