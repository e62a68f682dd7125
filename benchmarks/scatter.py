"""Scatter path: which of PyG's scatter/segment implementations pyg_mefl ends up calling, and
the measured effect of ``torch_scatter`` (worker side: ``scatter_worker``; driver side:
``scatter_report``)."""
import statistics
import time

from .measure import run_worker
from .report import fmt_time
from .workloads import build, gnn_layer_step, make_step

DISPATCH = (
    "On CPU, torch_geometric.utils.scatter runs sum/mean as native scatter_add_ and max/min as "
    "native scatter_reduce_ whether torch_scatter is installed or not (torch_scatter is "
    "preferred for CUDA tensors only); torch_scatter.segment_csr (else torch._segment_reduce) "
    "is used by torch_geometric.utils.segment, i.e. by softmax when PyG has a CSR ptr (an "
    "edge_index given as an EdgeIndex sorted by target). pyg_mefl's GatedGNNLayer bypasses both "
    "when the edges come in equal runs per target (the complete AU graph in the reference "
    "order, k-nearest-neighbour graphs built target by target): softmax and mean over a "
    "[targets, in-degree, C] view. SlotBatchNorm's per-slot statistics use native scatter_add_.")


def scatter_worker(args) -> dict:
    """The effect of torch_scatter on one workload, in one process: steps alternate between
    ``torch_geometric.typing.WITH_TORCH_SCATTER`` True and False (PyG reads the flag at every
    call), and the calls that reach torch_scatter or torch's native segment reduction are
    counted per step. Workloads: the whole model (``--gnn-graph model``) or one GatedGNNLayer
    on B faces of N AUs (``workloads.gnn_layer_step``)."""
    import torch
    import torch_geometric.typing as pyg_typing
    torch.manual_seed(0)
    faces, num = args.batch, args.aus
    if args.gnn_graph == "model":
        model, x = build("pyg", faces, num)
        step, num_edges = make_step(model, x, args.mode), faces * num * num
    else:
        step, num_edges = gnn_layer_step(args.gnn_graph, faces, num, args.mode)

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


def scatter_report(args, log) -> dict:
    import torch_geometric.typing as pyg_typing
    report = {"WITH_TORCH_SCATTER": pyg_typing.WITH_TORCH_SCATTER, "dispatch": DISPATCH,
              "runs": []}
    plans = [("uniform", 32), ("scatter", 32), ("segment", 32), ("model", 8)]
    for graph, batch in plans:
        for mode in ("eval", "train"):
            result = run_worker("head", args, impl="pyg", gnn_graph=graph, mode=mode,
                                batch=batch, aus=27, repeats=3 if args.quick else 7)
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
