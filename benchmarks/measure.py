"""How the modes measure: steps timed in turn (``alternate``), and the peak memory of one step,
each in a fresh worker process (see "Method" in ``head.py``).

``run_worker`` starts the process (``python -m benchmarks MODE --worker ...``); inside it,
``measure_step`` trims the heap, resets the kernel's resident-set high-water mark (VmHWM) and
charges the step with VmHWM after it less the resident set before it. ``dense_estimate_mb`` is
the dense peak predicted from the lifted ``[B, N^2, D, C]`` tensors.
"""
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .workloads import CHANNELS, TOKENS

ROOT = Path(__file__).resolve().parent.parent
MEM_COEF = {"eval": 5.0, "train": 9.0}  # lifted [B, N², D, C] tensors alive at the dense peak


def wall_time(step) -> float:
    """Seconds of one call of ``step``."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def alternate(steps: dict, rounds: int, measure=wall_time) -> dict:
    """``measure`` of every step of ``steps`` (name -> callable) in turn, ``rounds`` times (a, b,
    a, b, ...), so that all of them see the same state of a shared machine; name -> the list of
    measurements."""
    results = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            results[name].append(measure(step))
    return results


def medians(times: dict) -> dict:
    return {name: statistics.median(values) for name, values in times.items()}


def dense_estimate_mb(mode: str, batch: int, num: int) -> float:
    return MEM_COEF[mode] * batch * num * num * TOKENS * CHANNELS * 4 / 2 ** 20


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def trim_heap() -> None:
    """Return freed heap memory to the kernel (glibc), so that setup garbage cannot serve the
    measured step without being counted."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_step(step, data_limit_mb: float = 0):
    """Run ``step`` once and return its output and ``{peak_mb, base_mb, peak_exact, first_s}``,
    or ``None`` and ``{error}`` when it runs out of memory (under ``RLIMIT_DATA`` of
    ``data_limit_mb`` over the current data size, when given)."""
    gc.collect()
    trim_heap()
    exact = reset_peak()
    base_rss, base_max = status_mb("VmRSS"), status_mb("VmHWM")
    if data_limit_mb:  # a wrong memory estimate then fails this worker, not the machine
        limit = int((status_mb("VmData") + data_limit_mb) * 2 ** 20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
    start = time.perf_counter()
    try:
        out = step()
    except (MemoryError, RuntimeError) as error:
        return None, {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    first = time.perf_counter() - start
    peak = status_mb("VmHWM") - (base_rss if exact else base_max)
    if data_limit_mb:
        resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return out, {"peak_mb": round(peak, 1), "base_mb": round(base_rss, 1), "peak_exact": exact,
                 "first_s": first}


def run_worker(mode: str, args, /, **options) -> dict:
    """Run ``python -m benchmarks MODE --worker`` with ``options`` (as flags) in a fresh process,
    with ``args.threads`` threads and ``args.omp_wait_policy``; its last JSON line, or
    ``{error}``."""
    cmd = [sys.executable, "-m", "benchmarks", mode, "--worker", "--threads", str(args.threads)]
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
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"worker exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}
    return json.loads(lines[-1])
