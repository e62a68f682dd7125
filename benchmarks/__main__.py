"""The benchmarks' driver: ``python -m benchmarks MODE [options]``, from the repository root.

Each mode measures one suite. The driver holds what they share: the options ``--threads`` and
``--out``, the machine's description (CPU, memory, versions, load at the start and the end), the
progress log, the worker processes a mode starts (``python -m benchmarks MODE --worker ...``) and
the result file: ``benchmarks/results/<suite>.json``, the latest run of the suite (git keeps the
earlier ones). ``python -m benchmarks MODE --help`` lists a mode's own options;
``benchmarks/README.md`` gives the command behind every figure.

A mode is a module of this package with ``add_arguments(parser)``, ``run(args, log) -> dict``
(its results; a ``"machine"`` entry adds to the machine's description) and optionally
``worker(args) -> dict`` (one measurement in a fresh process, printed as JSON),
``suite(args) -> str`` (the result file's name, where the options make another suite) and
``render(results) -> str`` (a table printed at the end).
"""
import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from .machine import machine_info
from .report import Progress, write_results

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {
    "head": "the MEFL head against the published dense head: time, memory, FLOPs",
    "bounds": "what bounds the head's speed-up: the published head and the products floor",
    "layouts": "what the facts a face graph records (GraphLayout) buy on Batch input",
    "predict": "a whole model, images to probabilities, and predict over a folder",
    "video": "videos and photos of people end to end, against mexca's pipeline",
    "crop-margin": "the square crop's margin against mexca's framing of the same face",
    "distributed": "training steps per second with 1 and 2 processes, and their traffic",
    "cuda": "the head against the dense head on a GPU: time, memory, host syncs",
    "onnx": "the exported ONNX model in onnxruntime against the eager model",
}


def mode_module(mode: str):
    return importlib.import_module(f"{__package__}.{mode.replace('-', '_')}")


def suite_name(mode: str, module, args) -> str:
    """The suite a run measures: the mode, or the mode's name for it where its options make
    another suite (e.g. ``head-compiled``)."""
    return module.suite(args) if hasattr(module, "suite") else mode


def parse_args(argv):
    """The mode, its module and its options (only the chosen mode's module is imported: each
    needs its own extras)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0],
        epilog="modes:\n" + "\n".join(f"  {mode:12s} {text}" for mode, text in MODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=list(MODES), metavar="MODE")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the mode's options")
    chosen = parser.parse_args(argv)
    module = mode_module(chosen.mode)
    mode_parser = argparse.ArgumentParser(prog=f"python -m benchmarks {chosen.mode}",
                                          description=module.__doc__.split("\n")[0])
    mode_parser.add_argument("--threads", type=int, default=2,
                             help="torch threads (of each process)")
    mode_parser.add_argument("--out", type=Path, default=None,
                             help="the result file (default: benchmarks/results/<suite>.json)")
    mode_parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    module.add_arguments(mode_parser)
    return chosen.mode, module, mode_parser.parse_args(chosen.options)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    mode, module, args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(module.worker(args), default=str), flush=True)
        return {}
    suite = suite_name(mode, module, args)
    if args.out is None:
        args.out = RESULTS / f"{suite}.json"  # a long mode may write there what it has so far
    log = Progress()
    info = machine_info(args.threads)
    log(f"{mode}: {info['cpu']}, {args.threads} threads, torch {info['torch']}, PyG "
        f"{info['torch_geometric']}; load average {info['loadavg_start'][0]:.2f}")
    results = module.run(args, log)
    info.update(results.pop("machine", {}))
    info["loadavg_end"] = os.getloadavg()
    results = {"suite": suite, "command": " ".join(["python -m benchmarks", *argv]),
               "machine": info, **results, "wall_s": round(log.elapsed(), 1)}
    write_results(args.out, results)
    if hasattr(module, "render"):
        print("\n" + module.render(results) + "\n")
    log(f"wrote {args.out}; load average at the end {info['loadavg_end'][0]:.2f}")
    return results


if __name__ == "__main__":
    main()
