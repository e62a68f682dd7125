"""The machine a benchmark runs on: CPU, memory, library versions, load, float32 sgemm rate, and
the OpenMP wait policy of the worker processes."""
import os
import platform
import statistics
import time


def sgemm_rate(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a float32 ``size`` x ``size`` matrix product on ``threads`` threads (median)."""
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


WAIT_POLICIES = ("inherit", "passive", "active")


def add_wait_policy_argument(parser) -> None:
    """``--omp-wait-policy``, for the modes that measure in worker processes."""
    parser.add_argument("--omp-wait-policy", choices=WAIT_POLICIES, default="inherit",
                        help="OMP_WAIT_POLICY of the worker processes (default: as in the "
                             "environment)")


def wait_policy(args) -> str:
    """The OMP_WAIT_POLICY the worker processes run under."""
    if args.omp_wait_policy != "inherit":
        return args.omp_wait_policy.upper()
    return os.environ.get("OMP_WAIT_POLICY", "unset")
