"""Speed, memory, accuracy and host syncs of pyg_mefl against the dense MEFL head on a GPU.

Run from the repository root: ``python -m benchmarks cuda`` (results in
``benchmarks/results/cuda.json``, ``cuda-compiled.json`` with ``--compiled``; ``--device cpu`` runs
the same logic on the CPU, with small ``--channels`` / ``--tokens`` for a quick check, into
``cuda-on-cpu.json``). Shapes as in the ``head`` mode: D = 49 tokens, C = 512 channels, N main AUs
(14 sub AUs for N = 27, else none); ``--configs`` lists ``mode:BxN``.

Method:
    Both models are built by ``pyg_mefl.testing.pairs.make_pair`` with identical weights, for every
    configuration afresh. A step is ``workloads.make_step``'s: ``eval`` is one forward pass
    under ``torch.no_grad()`` in evaluation mode; ``train`` is ``zero_grad``, a forward pass in
    training mode, the loss ``-mean(log(clamp(p)))`` and the backward pass. With dtype ``bf16``
    the forward pass of both implementations runs under ``torch.autocast(device,
    dtype=torch.bfloat16)`` (the models stay float32); ``float32`` runs without autocast, with
    torch's default float32 matrix-product precision (recorded in the JSON).

    Each (configuration, dtype): one warm-up step of each implementation (its output gives the
    relative errors ``max|a - b| / max|b|``: pyg_mefl against dense in float32, and each
    implementation in bf16 against itself in float32); then the peak memory of one step of each,
    ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()`` minus
    ``memory_allocated()`` before the step (gradients set to ``None`` first, so that the step's
    own gradients count; CUDA only); then the host syncs of one pyg_mefl step, counted by
    ``torch.profiler`` (CPU and CUDA activities: runtime calls named ``cuda*Synchronize`` and
    ``cudaMemcpy`` inside the step, and device-to-host copies) and by running one step under
    ``torch.cuda.set_sync_debug_mode("error")``; then timed steps alternating dense and
    pyg_mefl (so that both see the same state of the machine), each timed by synchronising the
    device before and after it (``perf_counter``: the step's latency, host overhead included).
    The median is reported. Repeats adapt to the cost of a step: each row gets an equal share
    of what is left of ``--budget-s`` (half of it for the timed steps), between 3 and
    ``--repeats``.

    FLOPs: ``workloads.count_flops`` (matrix products, in-place ones included: nearly all of
    both implementations' arithmetic) over one float32 step of each implementation (forward,
    and backward in training), and the achieved rate FLOPs / median step time (bf16 rows
    reuse the float32 count).

    Dense configurations whose estimated peak (``memory.MEM_COEF`` lifted ``[B, N^2, D, C]``
    float32 tensors, as in the ``head`` mode) exceeds 90 % of the free device memory (CPU: 65 %
    of the available memory, at most 16 GB) are skipped and reported; one that still runs out of
    memory is reported with the error, and pyg_mefl is timed alone.
"""
import argparse
import contextlib
import gc
import platform
import statistics
import time

import torch

from pyg_mefl.testing.pairs import make_pair, relative_error

from .machine import meminfo_gb
from .measure import MEM_COEF, alternate
from .report import fmt_mb, fmt_num, fmt_ratio, fmt_time, pair_line, ratio, write_results
from .workloads import CHANNELS, TOKENS, count_flops, make_step, parse_configs, sub_aus

__all__ = ["add_arguments", "render", "run", "suite"]

IMPLS = ("dense", "pyg")
DTYPES = {"float32": None, "bf16": torch.bfloat16}
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cudaMemcpy")  # cudaMemcpy without Async blocks the host


def dtype_names(text: str) -> list:
    """``"float32,bf16"`` as a list of the dtypes' names (an argparse type)."""
    names = text.split(",")
    if any(name not in DTYPES for name in names):
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(DTYPES)}, got {text!r}")
    return names


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu")
    parser.add_argument("--configs", type=parse_configs,
                        default="eval:8x27,train:8x27,eval:32x27,train:32x27",
                        help="mode:BxN, comma-separated")
    parser.add_argument("--dtypes", type=dtype_names, default="float32,bf16",
                        help=f"comma-separated, of {', '.join(DTYPES)}")
    parser.add_argument("--repeats", type=int, default=25, help="most timed steps per row")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="seconds for the whole run; repeats adapt to it (at least 3)")
    parser.add_argument("--compiled", action="store_true",
                        help="pyg_mefl under torch.compile(fullgraph=True); dense stays eager")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode with --compiled, e.g. reduce-overhead (CUDA "
                             "graphs: no launch cost per kernel)")
    parser.add_argument("--channels", type=int, default=CHANNELS)
    parser.add_argument("--tokens", type=int, default=TOKENS)


def suite(args) -> str:
    """``cuda``, ``cuda-compiled``; ``-on-cpu`` for a run on the CPU."""
    return ("cuda" + ("-compiled" if args.compiled else "")
            + ("" if args.device.startswith("cuda") else "-on-cpu"))


class Device:
    """What differs between the CUDA and the CPU runs: synchronisation, memory, free space."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            if device.index is None:  # set_device wants an index
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        self.device = device

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free_bytes(self) -> float:
        if self.cuda:
            return 0.9 * torch.cuda.mem_get_info(self.device)[0]
        return min(16.0, 0.65 * meminfo_gb("MemAvailable")) * 2 ** 30

    def release(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()

    def time(self, step) -> float:
        self.sync()
        start = time.perf_counter()
        step()
        self.sync()
        return time.perf_counter() - start

    def measure(self, step, model):
        """Seconds of one step and its allocator peak in MB over what was allocated before it
        (:obj:`None` on the CPU), with the gradients of ``model`` freed first."""
        model.zero_grad(set_to_none=True)
        if not self.cuda:
            return self.time(step), None
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        seconds = self.time(step)
        return seconds, (torch.cuda.max_memory_allocated(self.device) - before) / 2 ** 20

    def host_syncs(self, step) -> dict:
        """Synchronising runtime calls and device-to-host copies in one step (profiler; ``count``
        adds them up, ``profiler`` also lists the asynchronous copies), and the verdict of
        ``set_sync_debug_mode("error")`` on another step."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile, record_function
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.sync()
        with profile(activities=activities) as prof:
            with record_function("measured_step"):
                step()
        events = prof.events()
        window = next((e.time_range for e in events if e.name == "measured_step"
                       and e.device_type == DeviceType.CPU), None)
        counts = {}
        for event in events:
            inside = window is None or window.start <= event.time_range.start <= window.end
            if (event.name.startswith("cudaMemcpy") or event.name in SYNC_CALLS) and inside \
                    or "DtoH" in event.name:
                counts[event.name] = counts.get(event.name, 0) + 1
        syncs = sum(n for name, n in counts.items() if name in SYNC_CALLS or "DtoH" in name)
        if not self.cuda:
            return {"profiler": counts, "count": syncs, "sync_debug_mode": "n/a"}
        self.sync()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
            verdict = "none"
        except RuntimeError as error:
            verdict = first_line(error)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return {"profiler": counts, "count": syncs, "sync_debug_mode": verdict}


class Forward(torch.nn.Module):
    """``module`` with its forward pass under autocast to ``dtype`` (none for :obj:`None`),
    keeping its last probabilities (``make_step`` returns the loss of a training step)."""

    def __init__(self, module: torch.nn.Module, dtype, device_type: str,
                 new_steps: bool = False):
        super().__init__()
        self.module = module
        self.new_steps = new_steps
        self.dtype, self.device_type = dtype, device_type
        self.probs = None

    def forward(self, x):
        autocast = contextlib.nullcontext() if self.dtype is None else \
            torch.autocast(self.device_type, dtype=self.dtype)
        if self.new_steps:  # each call is a new step for CUDA graph trees
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            out = self.module(x)
        # a copy: under CUDA graphs (``--compile-mode reduce-overhead``) the next replay
        # overwrites the outputs in place
        self.probs = (out["probs"] if isinstance(out, dict) else out).detach().clone()
        return out


def run_row(args, dev: Device, mode: str, batch: int, num: int, budget_s: float,
            log) -> list:
    """Rows of one configuration, one per dtype; ``budget_s``: its share of the run."""
    channels, tokens = args.channels, args.tokens
    estimate = MEM_COEF[mode] * batch * num * num * tokens * channels * 4
    limit = dev.free_bytes()
    dense, pyg = make_pair(channels, num, sub_aus(num), seed=0)
    models = {"dense": dense.to(dev.device), "pyg": pyg.to(dev.device)}
    runners = dict(models)
    if args.compiled:
        torch._dynamo.reset()
        runners["pyg"] = torch.compile(models["pyg"], fullgraph=True, mode=args.compile_mode)
    x = torch.randn(batch, tokens, channels,
                    generator=torch.Generator().manual_seed(1)).to(dev.device)
    skipped = (f"estimated peak {fmt_mb(estimate / 2 ** 20)} > limit {fmt_mb(limit / 2 ** 20)}"
               if estimate > limit else None)
    impls = [impl for impl in IMPLS if not (impl == "dense" and skipped)]
    flops, reference, rows = {}, {}, []
    for dtype_name in sorted(args.dtypes, key=lambda d: d != "float32"):  # float32 first
        dtype = DTYPES[dtype_name]
        row = {"mode": mode, "B": batch, "N": num, "S": sub_aus(num), "dtype": dtype_name,
               "dense_estimate_mb": round(estimate / 2 ** 20, 1),
               "dense_limit_mb": round(limit / 2 ** 20, 1)}
        entries = {impl: {} for impl in IMPLS}
        if skipped:
            entries["dense"]["skipped"] = skipped
        forwards = {impl: Forward(runners[impl], dtype, dev.device.type,
                                  new_steps=args.compiled and impl == "pyg") for impl in impls}
        steps = {impl: make_step(forwards[impl], x, mode) for impl in impls}
        probs = {}
        for impl in list(impls):  # warm-up (outputs for the errors), then the memory step
            try:
                entries[impl]["first_s"] = dev.time(steps[impl])
                probs[impl] = forwards[impl].probs.float()
                entries[impl]["step_s"], entries[impl]["peak_mb"] = dev.measure(
                    steps[impl], models[impl])
            except RuntimeError as error:  # out of memory, or an op the dtype lacks
                entries[impl] = {"error": f"{type(error).__name__}: {first_line(error)}"}
                impls.remove(impl)
                probs.pop(impl, None)
                models[impl].zero_grad(set_to_none=True)
                dev.release()
        if dtype is None:
            reference.update(probs)
            if len(impls) == 2:
                row["rel_error_vs_dense"] = relative_error(probs["pyg"], probs["dense"])
        for impl in impls:
            if dtype is not None and impl in reference:
                entries[impl]["rel_error_vs_float32"] = relative_error(probs[impl],
                                                                       reference[impl])
            if impl not in flops:  # float32, eager
                try:
                    flops[impl] = count_flops(make_step(Forward(models[impl], None, ""), x, mode))
                except RuntimeError as error:  # e.g. out of memory: the row goes on without
                    log(f"{impl}: FLOPs not counted: {first_line(error)}")
                    flops[impl] = None
            entries[impl]["flops"] = flops[impl]
        if "pyg" in impls:
            try:
                entries["pyg"]["host_syncs"] = dev.host_syncs(steps["pyg"])
            except Exception as error:  # the profiler must not cost the row
                entries["pyg"]["host_syncs"] = {"error": f"{type(error).__name__}: "
                                                         f"{first_line(error)}"}
        per_step = sum(entries[impl]["step_s"] for impl in impls)
        share = budget_s / len(args.dtypes) / 2  # half of it for the timed steps
        repeats = max(3, min(args.repeats, int(share / max(per_step, 1e-4))))
        times = alternate({impl: steps[impl] for impl in impls}, repeats, dev.time)
        for impl in impls:
            median = statistics.median(times[impl])
            entries[impl].update(times_s=times[impl], median_s=median, tflops_per_s=None
                                 if flops[impl] is None else flops[impl] / median / 1e12)
        row.update(entries)
        row["speedup"] = ratio(entries["dense"].get("median_s"), entries["pyg"].get("median_s"))
        row["memory_ratio"] = ratio(entries["dense"].get("peak_mb"),
                                    entries["pyg"].get("peak_mb"))
        log(progress_line(row))
        rows.append(row)
    del models, runners, forwards, steps
    gc.collect()
    dev.release()
    return rows


def first_line(error: Exception) -> str:
    return (str(error).splitlines() or [""])[0][:200]


def progress_line(row) -> str:
    syncs = row["pyg"].get("host_syncs", {})
    return (pair_line(row, f"{row['mode']:5s} B={row['B']:2d} N={row['N']:2d} {row['dtype']:7s}")
            + f"; pyg host syncs {syncs.get('count', '-')} "
            f"(debug mode: {syncs.get('sync_debug_mode', '-')})")


def render(results) -> str:
    """Markdown table of the rows."""
    lines = [f"{results['machine']['device_name']}, torch {results['machine']['torch']}, "
             f"PyG {results['machine']['torch_geometric']}, D={results['shapes']['D']}, "
             f"C={results['shapes']['C']}" + (", pyg_mefl compiled"
                                               if results["machine"]["compiled"] else ""), "",
             "| mode | B x N | dtype | dense | pyg_mefl | speed-up | dense peak | pyg peak | "
             "memory | rel. error | dense TFLOP/s | pyg TFLOP/s | pyg host syncs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        dense, ours = row["dense"], row["pyg"]
        if row["dtype"] == "float32":
            error = f"{row['rel_error_vs_dense']:.1e} vs dense" if "rel_error_vs_dense" in row \
                else "-"
        else:
            error = ", ".join(f"{impl} {row[impl]['rel_error_vs_float32']:.1e}" for impl in IMPLS
                              if "rel_error_vs_float32" in row[impl]) + " vs float32"
        syncs = ours.get("host_syncs", {})
        lines.append(
            f"| {row['mode']} | {row['B']} x {row['N']} | {row['dtype']} | "
            f"{dense.get('skipped') or dense.get('error') or fmt_time(dense.get('median_s'))} | "
            f"{ours.get('error') or fmt_time(ours.get('median_s'))} | "
            f"{fmt_ratio(row['speedup'])} | {fmt_mb(dense.get('peak_mb'))} | "
            f"{fmt_mb(ours.get('peak_mb'))} | {fmt_ratio(row['memory_ratio'])} | {error} | "
            f"{fmt_num(dense.get('tflops_per_s'), 2)} | {fmt_num(ours.get('tflops_per_s'), 2)} | "
            f"{syncs.get('count', '-')} ({syncs.get('sync_debug_mode', '-')}) |")
    return "\n".join(lines)


def device_info(args, dev: Device) -> dict:
    """The device and the settings of the run (the driver describes the rest of the machine)."""
    info = {"device": str(dev.device), "cuda": torch.version.cuda,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "compiled": args.compiled, "compile_mode": args.compile_mode,
            "budget_s": args.budget_s}
    if dev.cuda:
        props = torch.cuda.get_device_properties(dev.device)
        info.update(device_name=props.name, device_memory_gb=round(props.total_memory / 2 ** 30, 1),
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def run(args, log) -> dict:
    started = time.perf_counter()
    dev = Device(torch.device(args.device))
    info = device_info(args, dev)
    log(", ".join(f"{key} {value}" for key, value in info.items()))
    # the counter's control: a step that reads a value back (.item()) must count
    control = torch.ones(4, device=dev.device)
    info["host_sync_control"] = dev.host_syncs(lambda: (control * 2).sum().item())
    log(f"host syncs of a step that calls .item(): {info['host_sync_control']}")
    results = {"machine": info,
               "shapes": {"D": args.tokens, "C": args.channels, "sub_aus": "14 for N=27, else 0"},
               "method": " ".join(__doc__.split("Method:")[1].split()), "rows": [],
               "failed": []}
    for index, (mode, batch, num) in enumerate(args.configs):
        left = max(0.0, args.budget_s - (time.perf_counter() - started))
        try:
            results["rows"] += run_row(args, dev, mode, batch, num,
                                       left / (len(args.configs) - index), log)
        except Exception as error:  # report it, go on with the next one
            log(f"{mode} B={batch} N={num} failed: {type(error).__name__}: {first_line(error)}")
            results["failed"].append({"config": f"{mode}:{batch}x{num}",
                                      "error": f"{type(error).__name__}: {first_line(error)}"})
        write_results(args.out, results)  # what there is so far, should the run be cut short
    return results
