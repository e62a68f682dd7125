"""What every mode reports with: the number formats, the progress log and the result file."""
import json
import time
from pathlib import Path


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
    """``a / b``, or :obj:`None` where either is missing or ``b`` is not positive."""
    return None if a is None or b is None or b <= 0 else a / b


def pair_line(row, label: str) -> str:
    """Progress line of one row that times the dense head (``row["dense"]``) against pyg_mefl
    (``row["pyg"]``): each one's median and peak (or why it did not run), then the ratios."""
    parts = []
    for impl in ("dense", "pyg"):
        entry = row[impl]
        parts.append(f"{impl} " + (entry.get("skipped") or entry.get("error") or (
            f"{fmt_time(entry.get('median_s'))} (median of {len(entry.get('times_s', []))}), "
            f"peak {fmt_mb(entry.get('peak_mb'))}")))
    parts.append(f"speed-up {fmt_ratio(row.get('speedup'))}, memory "
                 f"{fmt_ratio(row.get('memory_ratio'))}")
    return f"{label}: " + "; ".join(parts)


class Progress:
    """The progress log: each message after the seconds since the run started."""

    def __init__(self):
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {message}", flush=True)


def write_results(path: Path, results: dict) -> None:
    """Write ``results`` as the suite's JSON file (it replaces the earlier one: the history of
    the figures is git's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
