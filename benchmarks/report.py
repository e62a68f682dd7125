"""Formatting of the results: the progress lines and the markdown tables (``render``)."""
from workloads import CHANNELS, TOKENS


def fmt_time(seconds):
    return "-" if seconds is None else (f"{seconds * 1e3:.0f} ms" if seconds < 1 else
                                        f"{seconds:.2f} s")


def fmt_mb(mb):
    return "-" if mb is None else (f"{mb:.0f} MB" if mb < 1024 else f"{mb / 1024:.2f} GB")


def fmt_ratio(value):
    return "-" if value is None else f"{value:.1f}x"


def fmt_num(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def grid_line(row) -> str:
    """Progress line of one row of the grid (dense against pyg_mefl)."""
    parts = []
    for impl in ("dense", "pyg"):
        entry = row[impl]
        parts.append(f"{impl} " + (entry.get("skipped") or entry.get("error") or (
            f"{fmt_time(entry.get('median_s'))} (median of {len(entry.get('times_s', []))}), "
            f"peak {fmt_mb(entry.get('peak_mb'))}")))
    if row["speedup"]:
        parts.append(f"speed-up {fmt_ratio(row['speedup'])}, memory "
                     f"{fmt_ratio(row['memory_ratio'])}")
    return f"{row['mode']:5s} B={row['B']:2d} N={row['N']:2d}: " + "; ".join(parts)


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
