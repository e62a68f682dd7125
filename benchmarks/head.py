"""Speed and peak memory of pyg_mefl against the dense MEFL head as the published code computes it.

Run ``make bench`` (``python -m benchmarks head``: the full grid, the kNN graphs and the scatter
path; ``--quick`` for a small subset; ``--configs`` for some rows of the grid alone). Both
implementations run in the same invocation with the same shapes: D = 49 tokens, C = 512
channels, N main AUs (14 sub AUs for N = 27, else none), ``torch.set_num_threads(2)``
(``--threads``). The dense formulation is ``pyg_mefl.testing.dense_reference.DenseMEFL``, which
repeats every node tensor N² times as the published ME-GraphAU / OpenGraphAU / mexca heads do.

Modes:
    ``eval``: ``model.eval()`` under ``torch.no_grad()``, one forward pass.
    ``train``: ``model.train()``, forward and backward of a scalar loss of the probabilities.

Method:
    Memory. Every (implementation, mode, B, N) gets a fresh worker process (``python -m
    benchmarks head --worker``). It builds the model and the input, runs one step of a tiny
    model of the same class (so that imports, lazy initialisation and thread pools are not
    charged to the step), collects garbage, returns the freed heap to the kernel (glibc
    ``malloc_trim``), resets the kernel's resident-set high-water mark
    (``/proc/self/clear_refs`` <- 5) and reads the resident set ``base``; then it runs one
    full-size step. **Peak memory per
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
    dense warm-up); both models are built by ``pyg_mefl.testing.pairs.make_pair`` with identical
    weights and the relative difference of their probabilities at this size is recorded.
    Repeats adapt to the cost of a step (``--budget`` seconds per configuration, between 2 and
    ``--repeats``); a dense training step at B = 32 takes minutes on two cores.

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

FLOPs: the matrix products (nearly all of both implementations' arithmetic) counted by
``workloads.count_flops``, in-place ``addmm_`` included (results before commit-of-this-change
counted with torch's ``FlopCounterMode``, which skips those: 10.3 instead of 13.3 GFLOP for an
eval step at B = 8, N = 27 + 14), for one forward pass, and for forward + backward
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

Modules: ``workloads`` (models, inputs, steps, FLOP counts, kNN graphs), ``measure`` (the
worker process, its memory probe, the alternating timer), ``runner`` (the worker's entry: paired
runs against the dense head), ``scatter`` (the scatter-path runs), ``machine`` (machine info,
sgemm rate), ``report`` (number formats, progress lines); the tables are this module's.
"""
import argparse

from .machine import add_wait_policy_argument, meminfo_gb, sgemm_rate, wait_policy
from .measure import dense_estimate_mb, run_worker
from .report import fmt_mb, fmt_num, fmt_ratio, fmt_time, pair_line, ratio
from .runner import check_equivalence, worker
from .scatter import scatter_report
from .workloads import CHANNELS, TOKENS, parse_configs, sub_aus

__all__ = ["add_arguments", "render", "run", "suite", "worker"]

GRID_B, GRID_N = (1, 8, 32), (8, 12, 27)
QUICK = [(1, 8), (8, 27)]
KNN_K = (4, 8, 27)


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
    common = dict(mode=mode, batch=batch, aus=num, repeats=args.repeats, budget=args.budget,
                  compiled=args.compiled)
    if skip:
        row["dense"] = {"skipped": skip}
        result = run_worker("head", args, impl="pyg", time="pyg", **common)
        row["pyg"] = result.get("pyg", result)
    else:
        ours = run_worker("head", args, impl="pyg", **common)  # memory, fresh process
        paired = run_worker("head", args, impl="dense", time="dense,pyg",
                            data_limit_mb=limit_gb * 1024 * 1.25, **common)
        if "error" in paired:  # dense failed: time pyg_mefl alone
            row["dense"] = {"error": paired["error"]}
            paired = run_worker("head", args, impl="pyg", time="pyg", **common)
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
    log(pair_line(row, f"{mode:5s} B={batch:2d} N={num:2d}"))
    return row


def suite(args) -> str:
    """The result file's name: ``head`` (some rows of the grid), ``head-full`` (the grid, the kNN
    graphs and the scatter path), ``head-quick``; ``-compiled`` under torch.compile."""
    compiled = "-compiled" if args.compiled else ""
    if args.grid_only or args.configs:
        return "head" + compiled
    return ("head-quick" if args.quick else "head-full") + compiled


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="B=1, N=8 and B=8, N=27 only; kNN at B=8; fewer scatter runs")
    parser.add_argument("--repeats", type=int, default=5, help="most timed repeats per worker")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed repeats per configuration (at least 2 repeats)")
    parser.add_argument("--mem-limit-gb", type=float, default=None,
                        help="largest estimated dense peak to run (default: 65%% of the "
                             "available memory, at most 16 GB)")
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--compiled", action="store_true",
                        help="pyg_mefl under torch.compile(fullgraph=True) (inductor); the dense "
                             "head stays eager")
    parser.add_argument("--configs", type=parse_configs, default=[],
                        help="only these grid rows, e.g. 'eval:8x27,train:8x27,eval:32x27' "
                             "(mode:BxN); implies --grid-only")
    parser.add_argument("--grid-only", action="store_true",
                        help="skip the kNN and scatter-path runs")
    add_wait_policy_argument(parser)
    # worker options
    parser.add_argument("--impl", choices=("dense", "pyg"), help=argparse.SUPPRESS)
    parser.add_argument("--time", default="", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("eval", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--aus", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--knn", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--gnn-graph", choices=("uniform", "scatter", "segment", "model"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--data-limit-mb", type=float, default=0, help=argparse.SUPPRESS)


def run_grid(args, log) -> list:
    """Dense against pyg_mefl over the grid of (mode, B, N)."""
    configs = QUICK if args.quick else [(b, n) for n in GRID_N for b in GRID_B]
    plan = [(mode, batch, num) for num in sorted({n for _, n in configs})
            for mode in ("eval", "train") for batch in sorted(b for b, n in configs if n == num)]
    if args.configs:
        plan = args.configs
    rows = [run_config(args, log, mode, batch, num) for mode, batch, num in plan]

    # dense FLOPs are linear in B: counted at B = 1, scaled
    per_face = {(r["N"], r["mode"]): r["dense"]["flops"] for r in rows
                if r["B"] == 1 and "flops" in r["dense"]}
    for r in rows:
        flops = per_face.get((r["N"], r["mode"]))
        if flops is not None:
            r["dense_gflop"] = flops * r["B"] / 1e9
            if "median_s" in r["dense"]:
                r["dense_gflops_per_s"] = flops * r["B"] / r["dense"]["median_s"] / 1e9
    return rows


def run_knn(args, log) -> list:
    """pyg_mefl alone at N = 27 on per-face k-nearest-neighbour graphs."""
    knn_rows = []
    knn_plan = [("eval", 8), ("train", 8)] + ([] if args.quick else [("eval", 32)])
    for mode, batch in knn_plan:
        for k in KNN_K:
            result = run_worker("head", args, impl="pyg", mode=mode, batch=batch, aus=27, knn=k,
                                time="pyg", repeats=args.repeats, budget=args.budget)
            knn_rows.append({"B": batch, "N": 27, "k": k, "mode": mode,
                             "pyg": result.get("pyg", result)})
            log(knn_line(knn_rows[-1]))
    return knn_rows


def run(args, log) -> dict:
    """The grid, then (unless ``--grid-only`` or ``--configs``) the kNN graphs and the scatter
    path."""
    machine = {"omp_wait_policy": wait_policy(args), "sgemm_gflops":
               round(sgemm_rate(args.threads), 1), "compiled": args.compiled}
    log(f"float32 sgemm {machine['sgemm_gflops']} GFLOP/s; OMP_WAIT_POLICY of the workers "
        f"{machine['omp_wait_policy']}")
    equivalence = check_equivalence()
    log("same weights, relative difference of the probabilities (B=2, N=27+14): " +
        ", ".join(f"{k} {v:.1e}" for k, v in equivalence.items()))
    rows = run_grid(args, log)
    grid_only = args.grid_only or bool(args.configs)
    return {"machine": machine, "equivalence_rel_error": equivalence,
            "shapes": {"D": TOKENS, "C": CHANNELS, "sub_aus": "14 for N=27, else 0"},
            "method": " ".join(__doc__.split("Method:")[1].split("FLOPs:")[0].split()),
            "grid": rows, "knn": [] if grid_only else run_knn(args, log),
            "scatter": {} if grid_only else scatter_report(args, log)}


def knn_line(row) -> str:
    """Progress line of one k-nearest-neighbour run."""
    result = row["pyg"]
    return f"{row['mode']:5s} B={row['B']:2d} N=27 kNN k={row['k']:2d}: " + (
        result.get("error") or
        f"{result['num_edges']} edges, {fmt_time(result['median_s'])}, peak "
        f"{fmt_mb(result['peak_mb'])}, {result['flops'] / 1e9:.1f} GFLOP")


def render(results) -> str:
    info = results["machine"]
    sgemm = info["sgemm_gflops"]
    lines = [
        f"Machine: {info['cpu']} ({info['cpu_capability']}), {info['threads']} threads of "
        f"{info['logical_cpus']} logical CPUs, {info['mem_total_gb']} GB; torch {info['torch']}, "
        f"torch_geometric {info['torch_geometric']}, torch_scatter {info['torch_scatter']}; "
        f"float32 sgemm {sgemm} GFLOP/s; load average {info['loadavg_start'][0]:.2f} at the "
        f"start, {info['loadavg_end'][0]:.2f} at the end; OMP_WAIT_POLICY "
        f"{info['omp_wait_policy']}; pyg_mefl "
        + ("under torch.compile (inductor)." if info.get("compiled") else "in eager mode."),
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
    if not scatter:  # a --configs / --grid-only run
        return "\n".join(lines)
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
