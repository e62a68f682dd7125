"""The ``head`` mode's worker process, and the runs against the dense reference head.

``worker`` measures one (implementation, mode, B, N): the peak memory of its first step
(``measure.measure_step``), then, with ``--time``, the median step time of each listed
implementation, alternating; the dense worker times both on identical weights
(``pyg_mefl.testing.pairs.make_pair``). ``check_equivalence``: same weights, same outputs.
"""
import statistics
import time

from .measure import alternate, measure_step
from .scatter import scatter_worker
from .workloads import CHANNELS, TOKENS, build, count_flops, make_step, sub_aus


def worker(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    if args.gnn_graph:
        return scatter_worker(args)
    timed = [impl for impl in args.time.split(",") if impl]
    if args.impl == "dense" and "pyg" in timed:  # same weights for the paired timing
        from pyg_mefl.testing.pairs import make_pair
        dense, ours = make_pair(CHANNELS, args.aus, sub_aus(args.aus), seed=0)
        models = {"dense": dense, "pyg": ours}
        x = torch.randn(args.batch, TOKENS, CHANNELS, generator=torch.Generator().manual_seed(1))
        inputs = {"dense": x, "pyg": x}
    else:
        model, x = build(args.impl, args.batch, args.aus, args.knn)
        models, inputs = {args.impl: model}, {args.impl: x}
    if args.compiled and "pyg" in models:
        models["pyg"] = torch.compile(models["pyg"], fullgraph=True)
    steps = {impl: make_step(models[impl], inputs[impl], args.mode) for impl in models}
    # Warm the code paths on a tiny model of the same class (negligible memory).
    tiny_model, tiny_x = build(args.impl, 2, min(args.aus, 12), args.knn and 3, 16, 4, seed=1)
    make_step(tiny_model, tiny_x, "eval")()
    make_step(tiny_model, tiny_x, "train")()
    del tiny_model, tiny_x
    if args.compiled and args.impl == "pyg":  # compile at full size before the measured step
        steps["pyg"]()
    first_out, probe = measure_step(steps[args.impl], args.data_limit_mb)
    if "error" in probe:
        return probe
    first = probe["first_s"]
    out = {args.impl: probe}
    if not timed:
        return out
    warm = {args.impl: first_out}
    for impl in timed:
        if impl not in warm:
            start = time.perf_counter()
            warm[impl] = steps[impl]()
            first += time.perf_counter() - start
    if args.mode == "eval" and len(warm) == 2:
        from pyg_mefl.testing.pairs import relative_error
        out["rel_error"] = relative_error(warm["pyg"], warm["dense"])
    repeats = max(2, min(args.repeats, int(args.budget / max(first, 1e-3))))
    times = alternate({impl: steps[impl] for impl in timed}, repeats)
    for impl in timed:
        entry = out.setdefault(impl, {})
        entry.update(times_s=times[impl], median_s=statistics.median(times[impl]))
    if "pyg" in timed:
        entry = out["pyg"]
        eager = getattr(models["pyg"], "_orig_mod", models["pyg"])  # count in eager mode
        entry["flops"] = count_flops(make_step(eager, inputs["pyg"], args.mode))
        if args.mode == "train":
            entry["forward_flops"] = count_flops(make_step(eager, inputs["pyg"], "eval"))
        entry["num_edges"] = (int(inputs["pyg"].edge_index.size(1)) if args.knn
                              else args.batch * args.aus ** 2)
    if "dense" in timed and args.batch == 1:  # dense FLOPs are linear in B: counted at B = 1
        out["dense"]["flops"] = count_flops(steps["dense"])
    return out


def check_equivalence() -> dict:
    """Same weights, same outputs: pyg_mefl against the dense head at C = 512, N = 27 + 14."""
    import torch
    from pyg_mefl.testing.pairs import make_pair, relative_error
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
