"""Train examples/train_au.py on every family of the suite, next to three baselines, and keep
every run's figures in results.json (recipes are compared there before a default is chosen).

    python -m benchmarks.training_suite.run_suite                       # default flags
    python -m benchmarks.training_suite.run_suite --recipe lr3e-3 -- --lr 3e-3
    python -m benchmarks.training_suite.run_suite --table               # README table
    python -m benchmarks.training_suite.run_suite --data-seed 1         # fresh draws

A recipe is a name and the train_au.py flags after ``--``; runs already in results.json are
skipped (delete an entry to rerun it). Baselines (predict every AU present, a token-wise MLP
with mean pooling, a ridge probe on the concatenated tokens; thresholds tuned on validation)
are computed once per family.
"""
import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from pyg_mefl.train.baselines import ridge_probe, token_mlp_probe
from pyg_mefl.train.metrics import AUMetrics

from .families import FAMILIES, make_family

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

RESULTS = os.path.join(HERE, "results.json")
DEFAULT = "default"


def _load():
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)
    return {"baselines": {}, "runs": {}}


def _save(results):
    temporary = RESULTS + ".tmp"
    with open(temporary, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(temporary, RESULTS)


def entry(family, data_seed):
    """The key of a family's figures in results.json: its name, with ``@seed<k>`` for another
    draw of its data than seed 0's."""
    return family if data_seed == 0 else f"{family}@seed{data_seed}"


def data_file(family, data_dir, data_seed=0):
    path = os.path.join(data_dir, f"{entry(family, data_seed)}.pt")
    if not os.path.exists(path):
        os.makedirs(data_dir, exist_ok=True)
        torch.save(make_family(family, seed=data_seed), path)
    return path


def _f1(scores, target, thresholds):
    metrics = AUMetrics(target.size(1), thresholds)
    metrics.update(scores, target)
    return metrics.compute()["mean_f1"]


def baselines(path):
    content = torch.load(path, weights_only=True)
    tokens, labels, split = content["tokens"], content["labels"], content["split"]
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        (tokens[split == code], labels[split == code]) for code in range(3))
    ridge = ridge_probe(train_x.flatten(1), train_y, val_x.flatten(1), val_y, test_x.flatten(1))
    mlp = token_mlp_probe(train_x, train_y, val_x, val_y, test_x)
    return {"all_present": _f1(torch.ones(test_y.shape), test_y, 0.5),
            "token_mlp": _f1(mlp.scores, test_y, mlp.thresholds),
            "ridge": _f1(ridge.scores, test_y, ridge.thresholds)}


def train(family, path, recipe, flags, out_dir):
    out = os.path.join(out_dir, recipe, family)  # family: its results.json entry
    command = [sys.executable, os.path.join(ROOT, "examples", "train_au.py"), "--features", path,
               "--seed", "0", "--out", out] + flags
    began = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        raise RuntimeError(f"{family} {recipe}: {result.stderr[-2000:]}")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    return {"flags": flags, "mean_f1": metrics["mean_f1"],
            "mean_f1_at_0.5": metrics["mean_f1_at_0.5"], "token_norm": metrics["token_norm"],
            "epochs_run": len(metrics["history"]),
            "val_mean_f1_calibrated": max(h["val_mean_f1_calibrated"]
                                          for h in metrics["history"]),
            "seconds": time.perf_counter() - began}


def table(results, recipe=DEFAULT, data_seed=0):
    lines = ["| family | train_au.py (default flags) | at 0.5 | token norm (auto) | "
             "predict all present | token-wise MLP | ridge probe | vs all present / ridge |",
             "|---|---|---|---|---|---|---|---|"]
    for family in FAMILIES:
        run = results["runs"].get(recipe, {}).get(entry(family, data_seed))
        base = results["baselines"].get(entry(family, data_seed))
        if run is None or base is None:
            continue
        lines.append(f"| {family} | **{run['mean_f1']:.1f}** | {run['mean_f1_at_0.5']:.1f} | "
                     f"{run['token_norm']} | {base['all_present']:.1f} | "
                     f"{base['token_mlp']:.1f} | {base['ridge']:.1f} | "
                     f"{run['mean_f1'] - base['all_present']:+.1f} / "
                     f"{run['mean_f1'] - base['ridge']:+.1f} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    flags = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=DEFAULT, help="name of the flags after --")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--data", default=os.path.join(HERE, "data"))
    parser.add_argument("--data-seed", type=int, default=0,
                        help="another draw of every family (its entries: <family>@seed<k>)")
    parser.add_argument("--runs", default=os.path.join(HERE, "runs"))
    parser.add_argument("--table", action="store_true", help="print the README table only")
    parser.add_argument("--no-baselines", action="store_true",
                        help="train only (another suite computes the baselines)")
    args = parser.parse_args(argv)
    results = _load()
    if args.table:
        print(table(results, args.recipe, args.data_seed))
        return
    names = [entry(family, args.data_seed) for family in args.families]
    paths = {name: data_file(family, args.data, args.data_seed)
             for family, name in zip(args.families, names)}
    jobs = [(args.recipe, name) for name in names
            if name not in results["runs"].get(args.recipe, {})]
    jobs += [("baselines", name) for name in names
             if name not in results["baselines"] and not args.no_baselines]

    def one(job):
        kind, family = job
        if kind == "baselines":
            return job, baselines(paths[family])
        return job, train(family, paths[family], args.recipe, flags, args.runs)

    torch.set_num_threads(1)
    with ThreadPoolExecutor(args.jobs) as pool:
        for (kind, family), figures in pool.map(one, jobs):
            # several suites may run at once: read, add and write under a lock
            with open(RESULTS + ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                results = _load()
                if kind == "baselines":
                    results["baselines"][family] = figures
                else:
                    results["runs"].setdefault(kind, {})[family] = figures
                _save(results)
            print(family, kind, figures, flush=True)
    print(table(results, args.recipe, args.data_seed))


if __name__ == "__main__":
    main()
