"""Speed and peak memory of pyg_mefl against the dense MEFL head as the published code computes it.

Run ``make bench`` (or ``python benchmarks/bench_mefl.py --out benchmarks/results.json``;
``--quick`` for a small subset). Both implementations run in the same invocation with the same
shapes: D = 49 tokens, C = 512 channels, N main AUs (14 sub AUs for N = 27, else none),
``torch.set_num_threads(2)`` (``--threads``). The dense formulation is
``tests/dense_reference.DenseMEFL``, which repeats every node tensor N² times as the published
ME-GraphAU / OpenGraphAU / mexca heads do.

Modes:
    ``eval``: ``model.eval()`` under ``torch.no_grad()``, one forward pass.
    ``train``: ``model.train()``, forward and backward of a scalar loss of the probabilities.

Method:
    Memory. Every (implementation, mode, B, N) gets a fresh worker process (this file with
    ``--worker``). It builds the model and the input, runs one step of a tiny model of the same
    class (so that imports, lazy initialisation and thread pools are not charged to the step),
    collects garbage, returns the freed heap to the kernel (glibc ``malloc_trim``), resets the
    kernel's resident-set high-water mark (``/proc/self/clear_refs`` <- 5) and reads the
    resident set ``base``; then it runs one full-size step. **Peak memory per
    step = VmHWM after the step - base**: what the step itself needed on top of the model and
    its input (activations, autograd's saved tensors, the gradients, which are set to ``None``
    before each step, and transient buffers), counted by the kernel in resident pages rather than
    by one allocator, so both implementations are charged alike. VmHWM is the high-water mark
    behind ``ru_maxrss``; ``ru_maxrss`` itself is not used because a child also inherits there
    the resident size its parent had when it was forked, which would hide a step smaller than
    the driver process. The process must be fresh because glibc keeps freed heap memory mapped:
    a second step in the same process re-uses it and barely moves the high-water mark, so a
    "warm up, then measure" scheme in one process under-reports. Without a writable
    ``clear_refs`` the worker reports the increase of VmHWM over the step (``peak_exact:
    false`` in the JSON).

    Time. The two implementations are timed in one process, alternating steps (dense, pyg_mefl,
    dense, ...) after a warm-up step of each, so that both see the same machine load (the machine
    is shared: a drift in load between two separate runs would bias the ratio). The median of
    the repeats is reported. The process is the dense memory worker (its measured step is the
    dense warm-up); both models are built by ``tests/pairs.make_pair`` with identical weights and
    the relative difference of their probabilities at this size is recorded. Repeats adapt to
    the cost of a step (``--budget`` seconds per configuration, between 2 and ``--repeats``);
    a dense training step at B = 32 takes minutes on two cores.

    Dense configurations whose estimated peak exceeds the memory limit (``--mem-limit-gb``;
    default: 65 % of the memory available when the configuration starts, at most 16 GB) are
    not run but reported as skipped with the estimate ``coef x B*N^2*D*C*4`` bytes: one lifted
    ``[B, N^2, D, C]`` float32 tensor times the number of such tensors alive at the dense peak
    (5 in eval, 9 in training, checked against the configurations that run: the JSON keeps
    both). Dense workers also run under an ``RLIMIT_DATA`` of 1.25x the limit over their
    start-up size, so that a wrong estimate ends in a ``MemoryError`` of the worker rather than
    in the machine running out of memory.

    The machine may be shared. With two OpenMP threads on two cores, any other busy process
    stalls every parallel region at its barrier, which costs the implementation with many
    mid-sized operations (pyg_mefl) proportionally more than one dominated by a few huge
    products (dense): the load averages at the start and the end of the run are recorded, and
    the ratios are best read from a quiet machine. On the shared 2-vCPU VM this was written on,
    GNU OpenMP's default wait policy (spin, then sleep) made such stalls far worse than either
    ``OMP_WAIT_POLICY=PASSIVE`` or ``ACTIVE`` (a small pyg_mefl training step: 4 s against
    0.1-0.2 s); ``--omp-wait-policy`` sets it for the workers, and the JSON records it.

FLOPs: counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, which is
nearly all of both implementations' arithmetic) for one forward pass, and for forward + backward
in training; the achieved rate is FLOPs / median step time, against this machine's float32
matrix-product rate (median of a 4096² sgemm, same threads).

Scatter path: which implementation of PyG's scatter/segment operations pyg_mefl ends up
calling, and the measured effect of ``torch_scatter``: each workload (one GatedGNNLayer on three
kinds of graph, and the whole model) runs in one process with steps alternating between
``torch_geometric.typing.WITH_TORCH_SCATTER`` True and False (PyG reads the flag at each call);
the calls reaching ``torch_scatter`` and torch's native segment reduction are counted.

Edge-proportional cost: N = 27 with per-face k-nearest-neighbour graphs (k sources per target,
self-loop included, by cosine similarity of the AU node features), given to the model as a PyG
``Batch`` of ``face_graph(tokens, 27, edge_index=...)``.
"""
import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # dense_reference
sys.path.insert(0, str(ROOT))

TOKENS, CHANNELS = 49, 512
GRID_B, GRID_N = (1, 8, 32), (8, 12, 27)
QUICK = [(1, 8), (8, 27)]
KNN_K = (4, 8, 27)
MEM_COEF = {"eval": 5.0, "train": 9.0}  # lifted [B, N², D, C] tensors alive at the dense peak


def sub_aus(num_aus: int) -> int:
    return 14 if num_aus == 27 else 0


# ------------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------------

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")



def _trim_heap() -> None:
    """Return freed heap memory to the kernel (glibc), so that setup garbage cannot serve the
    measured step without being counted."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def knn_edge_index(features, k: int):
    """Per face: each target AU's k most similar AUs (cosine similarity of ``features`` [N, C]),
    itself included, as sources; edges grouped by target, sources ascending."""
    import torch
    import torch.nn.functional as F
    num = features.size(0)
    unit = F.normalize(features, dim=-1)
    sim = unit @ unit.t()
    sim.fill_diagonal_(float("inf"))  # the self-loop is always kept
    source = sim.topk(k, dim=1).indices.sort(dim=1).values  # [N, k]
    target = torch.arange(num).unsqueeze(1).expand(num, k)
    return torch.stack([source.reshape(-1), target.reshape(-1)])


def build(impl: str, num_faces: int, num_aus: int, knn: int = 0, channels: int = CHANNELS,
          tokens: int = TOKENS, seed: int = 0):
    """Model and input of one configuration; the input is a tensor, or a Batch for ``knn``."""
    import torch
    torch.manual_seed(seed)
    x = torch.randn(num_faces, tokens, channels)
    if impl == "dense":
        from dense_reference import DenseMEFL
        return DenseMEFL(channels, num_aus, sub_aus(num_aus)), x
    from pyg_mefl import MEFL, face_graph
    from torch_geometric.data import Batch
    model = MEFL(channels, num_aus, sub_aus(num_aus))
    if not knn:
        return model, x
    with torch.no_grad():
        model.eval()
        au_id = torch.arange(num_aus).repeat(num_faces)
        batch = torch.arange(num_faces).repeat_interleave(num_aus)
        nodes = model.afg(x, au_id, batch).mean(dim=1).view(num_faces, num_aus, -1)
    graphs = [face_graph(x[b], num_aus, edge_index=knn_edge_index(nodes[b], knn))
              for b in range(num_faces)]
    return model, Batch.from_data_list(graphs)


def make_step(model, x, mode: str):
    import torch

    def probs(out):
        return out["probs"] if isinstance(out, dict) else out

    if mode == "eval":
        model.eval()

        def step():
            with torch.no_grad():
                return probs(model(x))
    else:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            p = probs(model(x))
            loss = -(p.clamp(1e-8, 1.0).log()).mean()  # any scalar of all outputs will do
            loss.backward()
            return loss
    return step


def count_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def worker(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    if args.gnn_graph:
        return scatter_worker(args)
    timed = [impl for impl in args.time.split(",") if impl]
    if args.impl == "dense" and "pyg" in timed:  # same weights for the paired timing
        from pairs import make_pair
        dense, ours = make_pair(CHANNELS, args.aus, sub_aus(args.aus), seed=0)
        models = {"dense": dense, "pyg": ours}
        x = torch.randn(args.batch, TOKENS, CHANNELS, generator=torch.Generator().manual_seed(1))
        inputs = {"dense": x, "pyg": x}
    else:
        model, x = build(args.impl, args.batch, args.aus, args.knn)
        models, inputs = {args.impl: model}, {args.impl: x}
    steps = {impl: make_step(models[impl], inputs[impl], args.mode) for impl in models}
    # Warm the code paths on a tiny model of the same class (negligible memory).
    tiny_model, tiny_x = build(args.impl, 2, min(args.aus, 12), args.knn and 3, 16, 4, seed=1)
    make_step(tiny_model, tiny_x, "eval")()
    make_step(tiny_model, tiny_x, "train")()
    del tiny_model, tiny_x
    gc.collect()
    _trim_heap()
    exact = _reset_peak()
    base_rss, base_max = _status_mb("VmRSS"), _status_mb("VmHWM")
    if args.data_limit_mb:  # a wrong memory estimate then fails this worker, not the machine
        limit = int((_status_mb("VmData") + args.data_limit_mb) * 2 ** 20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
    start = time.perf_counter()
    try:
        first_out = steps[args.impl]()
    except (MemoryError, RuntimeError) as error:
        return {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    first = time.perf_counter() - start
    peak = _status_mb("VmHWM") - (base_rss if exact else base_max)
    out = {args.impl: {"peak_mb": round(peak, 1), "base_mb": round(base_rss, 1),
                       "peak_exact": exact, "first_s": first}}
    if args.data_limit_mb:
        resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    if not timed:
        return out
    warm = {args.impl: first_out}
    for impl in timed:
        if impl not in warm:
            start = time.perf_counter()
            warm[impl] = steps[impl]()
            first += time.perf_counter() - start
    if args.mode == "eval" and len(warm) == 2:
        from pairs import relative_error
        out["rel_error"] = relative_error(warm["pyg"], warm["dense"])
    repeats = max(2, min(args.repeats, int(args.budget / max(first, 1e-3))))
    times = {impl: [] for impl in timed}
    for _ in range(repeats):
        for impl in timed:
            start = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - start)
    for impl in timed:
        entry = out.setdefault(impl, {})
        entry.update(times_s=times[impl], median_s=statistics.median(times[impl]))
    if "pyg" in timed:
        entry = out["pyg"]
        entry["flops"] = count_flops(steps["pyg"])
        if args.mode == "train":
            entry["forward_flops"] = count_flops(make_step(models["pyg"], inputs["pyg"], "eval"))
        entry["num_edges"] = (int(inputs["pyg"].edge_index.size(1)) if args.knn
                              else args.batch * args.aus ** 2)
    if "dense" in timed and args.batch == 1:  # dense FLOPs are linear in B: counted at B = 1
        out["dense"]["flops"] = count_flops(steps["dense"])
    return out


def scatter_worker(args) -> dict:
    """The effect of torch_scatter on one workload, in one process: steps alternate between
    ``torch_geometric.typing.WITH_TORCH_SCATTER`` True and False (PyG reads the flag at every
    call), and the calls that reach torch_scatter or torch's native segment reduction are
    counted per step. Workloads: the whole model (``--gnn-graph model``) or one GatedGNNLayer
    (norm='slot', C = 512) on B faces of N AUs given as ``uniform`` (complete graphs, edges
    grouped by target: reshape fast path), ``scatter`` (random in-degrees, edges in random order:
    index-based scatter softmax/aggregation) or ``segment`` (the same random graph sorted by
    target as a ``torch_geometric.EdgeIndex``: PyG hands a CSR ``ptr`` to the softmax)."""
    import torch
    import torch_geometric.typing as pyg_typing
    from torch_geometric import EdgeIndex
    from pyg_mefl import GatedGNNLayer, complete_au_graph, edge_slots
    torch.manual_seed(0)
    faces, num = args.batch, args.aus
    if args.gnn_graph == "model":
        model, x = build("pyg", faces, num)
        step, num_edges = make_step(model, x, args.mode), faces * num * num
    else:
        layer = GatedGNNLayer(CHANNELS, norm="slot", num_node_slots=num, num_edge_slots=num * num)
        au_id = torch.arange(num).repeat(faces)
        edge_index = complete_au_graph(num, faces)
        if args.gnn_graph != "uniform":
            edge_index = edge_index[:, torch.rand(edge_index.size(1)) < 0.5]  # random in-degrees
            edge_index = edge_index[:, torch.randperm(edge_index.size(1))]
        edge_slot = edge_slots(edge_index, au_id, num)
        if args.gnn_graph == "segment":
            order = edge_index[1].argsort(stable=True)
            edge_index, edge_slot = edge_index[:, order], edge_slot[order]
            edge_index = EdgeIndex(edge_index, sparse_size=(faces * num, faces * num),
                                   sort_order="col")
        x = torch.randn(faces * num, CHANNELS)
        edge_attr = torch.randn(edge_index.size(1), CHANNELS, requires_grad=args.mode == "train")
        layer.train(args.mode == "train")
        num_edges = int(edge_index.size(1))

        def step():
            if args.mode == "eval":
                with torch.no_grad():
                    return layer(x, edge_index, edge_attr, au_id, edge_slot)
            out, edges = layer(x, edge_index, edge_attr, au_id, edge_slot)
            (out.sum() + edges.sum()).backward()

    calls = {"torch_scatter": 0, "native_segment": 0}

    def counting(function, key):
        def wrapper(*a, **k):
            calls[key] += 1
            return function(*a, **k)
        return wrapper

    available = pyg_typing.WITH_TORCH_SCATTER
    if available:
        module = pyg_typing.torch_scatter
        for name in ("scatter", "segment_csr", "scatter_max", "scatter_min", "gather_csr"):
            if hasattr(module, name):
                setattr(module, name, counting(getattr(module, name), "torch_scatter"))
    torch._segment_reduce = counting(torch._segment_reduce, "native_segment")
    settings = {"torch_scatter": True, "native": False} if available else {"native": False}
    out = {"num_edges": num_edges}
    for label, flag in settings.items():
        pyg_typing.WITH_TORCH_SCATTER = flag
        step()  # warm-up
        calls.update(torch_scatter=0, native_segment=0)
        step()
        out[label] = {"calls_per_step": dict(calls), "times_s": []}
    for _ in range(args.repeats):
        for label, flag in settings.items():
            pyg_typing.WITH_TORCH_SCATTER = flag
            start = time.perf_counter()
            step()
            out[label]["times_s"].append(time.perf_counter() - start)
    for label in settings:
        out[label]["median_s"] = statistics.median(out[label]["times_s"])
    return out


# ------------------------------------------------------------------------------------------------
# Driver side
# ------------------------------------------------------------------------------------------------

def run_worker(args, **options) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads",
           str(args.threads)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                cmd.append(flag)
        else:
            cmd += [flag, str(value)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"worker exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    return json.loads(lines[-1])


def sgemm_rate(threads: int, size: int = 4096, repeats: int = 5) -> float:
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def meminfo_gb(field: str) -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("nan")


def machine_info(threads: int) -> dict:
    import torch
    import torch_geometric
    import torch_geometric.typing as pyg_typing
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    scatter_version = None
    if pyg_typing.WITH_TORCH_SCATTER:
        import torch_scatter
        scatter_version = torch_scatter.__version__
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads,
            "mem_total_gb": round(meminfo_gb("MemTotal"), 1),
            "mem_available_gb": round(meminfo_gb("MemAvailable"), 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__, "torch_scatter": scatter_version,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg_start": os.getloadavg()}


def check_equivalence() -> dict:
    """Same weights, same outputs: pyg_mefl against the dense head at C = 512, N = 27 + 14."""
    import torch
    from pairs import make_pair, relative_error
    out = {}
    for dtype in (torch.float32, torch.float64):
        dense, model = make_pair(CHANNELS, 27, 14, seed=0, dtype=dtype)
        x = torch.randn(2, TOKENS, CHANNELS, generator=torch.Generator().manual_seed(0)).to(dtype)
        for mode in ("eval", "train"):
            dense.train(mode == "train")
            model.train(mode == "train")
            with torch.no_grad():
                out[f"{mode}_{str(dtype).split('.')[-1]}"] = relative_error(model(x),
                                                                            dense(x)["probs"])
    return out


def dense_estimate_mb(mode: str, batch: int, num: int) -> float:
    return MEM_COEF[mode] * batch * num * num * TOKENS * CHANNELS * 4 / 2 ** 20


def fmt_time(seconds):
    return "-" if seconds is None else (f"{seconds * 1e3:.0f} ms" if seconds < 1 else
                                        f"{seconds:.2f} s")


def fmt_mb(mb):
    return "-" if mb is None else (f"{mb:.0f} MB" if mb < 1024 else f"{mb / 1024:.2f} GB")


def fmt_ratio(value):
    return "-" if value is None else f"{value:.1f}x"


def fmt_num(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def run_config(args, log, mode: str, batch: int, num: int) -> dict:
    """Memory of each implementation in its own fresh process; paired timing in the dense one."""
    row = {"B": batch, "N": num, "S": sub_aus(num), "mode": mode}
    limit_gb = args.mem_limit_gb or min(16.0, 0.65 * meminfo_gb("MemAvailable"))
    estimate = dense_estimate_mb(mode, batch, num)
    row["dense_estimate_mb"] = round(estimate, 1)
    row["dense_mem_limit_gb"] = round(limit_gb, 1)
    skip = ("--skip-dense" if args.skip_dense else
            f"estimated peak {fmt_mb(estimate)} > limit {limit_gb:.1f} GB"
            if estimate > limit_gb * 1024 else None)
    common = dict(mode=mode, batch=batch, aus=num, repeats=args.repeats, budget=args.budget)
    if skip:
        row["dense"] = {"skipped": skip}
        result = run_worker(args, impl="pyg", time="pyg", **common)
        row["pyg"] = result.get("pyg", result)
    else:
        ours = run_worker(args, impl="pyg", **common)  # memory, fresh process
        paired = run_worker(args, impl="dense", time="dense,pyg",
                            data_limit_mb=limit_gb * 1024 * 1.25, **common)
        if "error" in paired:  # dense failed: time pyg_mefl alone
            row["dense"] = {"error": paired["error"]}
            paired = run_worker(args, impl="pyg", time="pyg", **common)
            paired.get("pyg", {}).pop("peak_mb", None)
        else:
            row["dense"] = paired["dense"]
        row["pyg"] = dict(paired.get("pyg", {}), **ours.get("pyg", {"error": ours.get("error")}))
        if "rel_error" in paired:
            row["rel_error"] = paired["rel_error"]
    dense, ours = row["dense"], row["pyg"]
    row["speedup"] = ratio(dense.get("median_s"), ours.get("median_s"))
    row["memory_ratio"] = ratio(dense.get("peak_mb"), ours.get("peak_mb"))
    if "flops" in ours and "median_s" in ours:
        row["pyg_gflop"] = ours["flops"] / 1e9
        row["pyg_gflops_per_s"] = ours["flops"] / ours["median_s"] / 1e9
    parts = []
    for impl in ("dense", "pyg"):
        entry = row[impl]
        parts.append(f"{impl} " + (entry.get("skipped") or entry.get("error") or (
            f"{fmt_time(entry.get('median_s'))} (median of {len(entry.get('times_s', []))}), "
            f"peak {fmt_mb(entry.get('peak_mb'))}")))
    if row["speedup"]:
        parts.append(f"speed-up {fmt_ratio(row['speedup'])}, memory "
                     f"{fmt_ratio(row['memory_ratio'])}")
    log(f"{mode:5s} B={batch:2d} N={num:2d}: " + "; ".join(parts))
    return row


DISPATCH = (
    "On CPU, torch_geometric.utils.scatter runs sum/mean as native scatter_add_ and max/min as "
    "native scatter_reduce_ whether torch_scatter is installed or not (torch_scatter is "
    "preferred for CUDA tensors only); torch_scatter.segment_csr (else torch._segment_reduce) "
    "is used by torch_geometric.utils.segment, i.e. by softmax when PyG has a CSR ptr (an "
    "edge_index given as an EdgeIndex sorted by target). pyg_mefl's GatedGNNLayer bypasses both "
    "when the edges come in equal runs per target (the complete AU graph in the reference "
    "order, k-nearest-neighbour graphs built target by target): softmax and mean over a "
    "[targets, in-degree, C] view. SlotBatchNorm's per-slot statistics use native scatter_add_.")


def scatter_report(args, log) -> dict:
    import torch_geometric.typing as pyg_typing
    report = {"WITH_TORCH_SCATTER": pyg_typing.WITH_TORCH_SCATTER, "dispatch": DISPATCH,
              "runs": []}
    plans = [("uniform", 32), ("scatter", 32), ("segment", 32), ("model", 8)]
    for graph, batch in plans:
        for mode in ("eval", "train"):
            result = run_worker(args, impl="pyg", gnn_graph=graph, mode=mode, batch=batch, aus=27,
                                repeats=3 if args.quick else 7)
            entry = {"workload": ("MEFL step" if graph == "model" else
                                  f"GatedGNNLayer, {graph} graph"), "mode": mode, "B": batch,
                     **result}
            if "median_s" in entry.get("torch_scatter", {}):
                entry["native_over_torch_scatter"] = (entry["native"]["median_s"] /
                                                      entry["torch_scatter"]["median_s"])
            report["runs"].append(entry)
            log(f"scatter path: {entry['workload']} ({mode}, B={batch}, "
                f"{entry.get('num_edges')} edges): " + (entry.get("error") or ", ".join(
                    f"{label} {fmt_time(entry[label]['median_s'])} "
                    f"({entry[label]['calls_per_step']['torch_scatter']} torch_scatter calls)"
                    for label in ("torch_scatter", "native") if label in entry)))
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--quick", action="store_true",
                        help="B=1, N=8 and B=8, N=27 only; kNN at B=8; fewer scatter runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="most timed repeats per worker")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed repeats per configuration (at least 2 repeats)")
    parser.add_argument("--mem-limit-gb", type=float, default=None,
                        help="largest estimated dense peak to run (default: 65%% of the "
                             "available memory, at most 16 GB)")
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--omp-wait-policy", choices=("inherit", "passive", "active"),
                        default="inherit",
                        help="OMP_WAIT_POLICY of the workers (default: as in the environment)")
    # worker options
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("dense", "pyg"), help=argparse.SUPPRESS)
    parser.add_argument("--time", default="", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("eval", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--aus", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--knn", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--gnn-graph", choices=("uniform", "scatter", "segment", "model"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--data-limit-mb", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:5.0f} s] {message}", flush=True)

    info = machine_info(args.threads)
    info["omp_wait_policy"] = (args.omp_wait_policy.upper() if args.omp_wait_policy != "inherit"
                               else os.environ.get("OMP_WAIT_POLICY", "unset"))
    info["sgemm_gflops"] = round(sgemm_rate(args.threads), 1)
    log(f"{info['cpu']}, {args.threads} threads, torch {info['torch']}, PyG "
        f"{info['torch_geometric']}, torch_scatter {info['torch_scatter']}; float32 sgemm "
        f"{info['sgemm_gflops']} GFLOP/s; load average {info['loadavg_start'][0]:.2f}")
    equivalence = check_equivalence()
    log("same weights, relative difference of the probabilities (B=2, N=27+14): " +
        ", ".join(f"{k} {v:.1e}" for k, v in equivalence.items()))

    configs = QUICK if args.quick else [(b, n) for n in GRID_N for b in GRID_B]
    rows = [run_config(args, log, mode, batch, num)
            for num in sorted({n for _, n in configs}) for mode in ("eval", "train")
            for batch in sorted(b for b, n in configs if n == num)]

    # dense FLOPs are linear in B: counted at B = 1, scaled
    per_face = {(r["N"], r["mode"]): r["dense"]["flops"] for r in rows
                if r["B"] == 1 and "flops" in r["dense"]}
    for r in rows:
        flops = per_face.get((r["N"], r["mode"]))
        if flops is not None:
            r["dense_gflop"] = flops * r["B"] / 1e9
            if "median_s" in r["dense"]:
                r["dense_gflops_per_s"] = flops * r["B"] / r["dense"]["median_s"] / 1e9

    knn_rows = []
    knn_plan = [("eval", 8), ("train", 8)] + ([] if args.quick else [("eval", 32)])
    for mode, batch in knn_plan:
        for k in KNN_K:
            result = run_worker(args, impl="pyg", mode=mode, batch=batch, aus=27, knn=k,
                                time="pyg", repeats=args.repeats, budget=args.budget)
            result = result.get("pyg", result)
            knn_rows.append({"B": batch, "N": 27, "k": k, "mode": mode, "pyg": result})
            log(f"{mode:5s} B={batch:2d} N=27 kNN k={k:2d}: " + (
                result.get("error") or
                f"{result['num_edges']} edges, {fmt_time(result['median_s'])}, peak "
                f"{fmt_mb(result['peak_mb'])}, {result['flops'] / 1e9:.1f} GFLOP"))

    scatter = scatter_report(args, log)
    info["loadavg_end"] = os.getloadavg()
    results = {"machine": info, "equivalence_rel_error": equivalence,
               "shapes": {"D": TOKENS, "C": CHANNELS, "sub_aus": "14 for N=27, else 0"},
               "method": " ".join(__doc__.split("Method:")[1].split("FLOPs:")[0].split()),
               "grid": rows, "knn": knn_rows, "scatter": scatter,
               "wall_s": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print()
    print(render(results))
    log(f"wrote {args.out}")


def render(results) -> str:
    info = results["machine"]
    sgemm = info["sgemm_gflops"]
    lines = [
        f"Machine: {info['cpu']} ({info['cpu_capability']}), {info['threads']} threads of "
        f"{info['logical_cpus']} logical CPUs, {info['mem_total_gb']} GB; torch {info['torch']}, "
        f"torch_geometric {info['torch_geometric']}, torch_scatter {info['torch_scatter']}; "
        f"float32 sgemm {sgemm} GFLOP/s; load average {info['loadavg_start'][0]:.2f} at the "
        f"start, {info['loadavg_end'][0]:.2f} at the end; OMP_WAIT_POLICY "
        f"{info['omp_wait_policy']}.",
        f"D = {TOKENS}, C = {CHANNELS}, 14 sub AUs with N = 27. Time: median per step, both "
        "implementations alternating in one process. Memory: peak resident memory of one step "
        "over the model and input, each in a fresh process. GFLOP/s: FLOPs of the step (forward "
        "in eval, forward + backward in train) over its median time.", "",
        "| mode | B | N | dense | pyg_mefl | speed-up | dense peak | pyg_mefl peak | memory "
        "ratio | dense GFLOP/s | pyg_mefl GFLOP | pyg_mefl GFLOP/s (% sgemm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["grid"]:
        dense, ours = r["dense"], r["pyg"]
        if "skipped" in dense:
            dense_time, dense_mem = "skipped", f"est. {fmt_mb(r['dense_estimate_mb'])}"
        elif "error" in dense:
            dense_time, dense_mem = "failed", "-"
        else:
            dense_time, dense_mem = fmt_time(dense.get("median_s")), fmt_mb(dense.get("peak_mb"))
        rate = r.get("pyg_gflops_per_s")
        lines.append(
            f"| {r['mode']} | {r['B']} | {r['N']} | {dense_time} | {fmt_time(ours.get('median_s'))}"
            f" | {fmt_ratio(r['speedup'])} | {dense_mem} | {fmt_mb(ours.get('peak_mb'))} | "
            f"{fmt_ratio(r['memory_ratio'])} | {fmt_num(r.get('dense_gflops_per_s'))} | "
            f"{fmt_num(r.get('pyg_gflop'))} | "
            + ("-" if rate is None else f"{rate:.1f} ({100 * rate / sgemm:.0f} %)") + " |")
    if results["knn"]:
        lines += ["", "N = 27 with k-nearest-neighbour face graphs (k sources per target, "
                  "self-loop included), pyg_mefl only:", "",
                  "| mode | B | k | edges | time | peak | GFLOP |", "|---|---|---|---|---|---|---|"]
        for r in results["knn"]:
            ours = r["pyg"]
            lines.append(f"| {r['mode']} | {r['B']} | {r['k']} | {ours.get('num_edges', '-')} | "
                         f"{fmt_time(ours.get('median_s'))} | {fmt_mb(ours.get('peak_mb'))} | "
                         f"{fmt_num(ours['flops'] / 1e9 if 'flops' in ours else None)} |")
    scatter = results["scatter"]
    lines += ["", f"Scatter path (WITH_TORCH_SCATTER = {scatter['WITH_TORCH_SCATTER']}): "
              + scatter["dispatch"], "",
              "| workload | mode | B | edges | with torch_scatter | native only | native / "
              "torch_scatter | torch_scatter calls per step |", "|---|---|---|---|---|---|---|---|"]
    for r in scatter["runs"]:
        with_ts = r.get("torch_scatter", {})
        lines.append(f"| {r['workload']} | {r['mode']} | {r['B']} | {r.get('num_edges', '-')} | "
                     f"{fmt_time(with_ts.get('median_s'))} | "
                     f"{fmt_time(r.get('native', {}).get('median_s'))} | "
                     f"{fmt_num(r.get('native_over_torch_scatter'), 2)} | "
                     f"{with_ts.get('calls_per_step', {}).get('torch_scatter', '-')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
