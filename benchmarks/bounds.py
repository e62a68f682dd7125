"""What bounds pyg_mefl's speed-up over the published head on this machine.

Run ``python -m benchmarks bounds`` (results in ``benchmarks/results/bounds.json``). For B
faces (``--batch``, default 8) of N = 27 + 14 AUs, D = 49, C = 512, in ``eval`` and ``train``
(as in the ``head`` mode), it measures two bounds:

1. **The baseline.** The dense reference (``pyg_mefl.testing.dense_reference.DenseMEFL``, the
   baseline of every benchmark here) and, with ``--published`` (the ``mexca`` package on
   ``PYTHONPATH``, e.g. the unpacked mexca 1.0.4 wheel), the published ``mexca.video.mefl.MEFL``,
   loaded strictly with the same weights (``MEFL.to_published_state_dict("mexca")``), timed
   with pyg_mefl's step, alternating in one process (medians). Their outputs are compared.
2. **The products floor.** Every matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``)
   pyg_mefl's step dispatches is recorded with its shapes and strides and then timed on its
   own, hot in cache (median of ``--repeats``). The sum is what the step's products take at
   the rates this BLAS reaches on these shapes: a step made of nothing else could not be
   faster. ``ceiling`` is the speed-up such a step would have over the dense baseline.

The remainder (step time less the floor) is everything that is not a product: softmaxes,
norms, gates, copies and the Python around them.
"""
import functools
import statistics

from .measure import alternate, medians, wall_time
from .workloads import CHANNELS, TOKENS, make_step, matrix_products, product_flops, sub_aus

__all__ = ["add_arguments", "run"]


def products_floor(calls, repeats: int) -> dict:
    """Each recorded product timed on its own, ``repeats`` times in a row after a warm-up (hot in
    cache: a lower bound), random operands of the recorded layout; a 2048 x 2048 sgemm is timed
    after each, so that the share of the sgemm rate is taken under the same machine load."""
    import torch

    def operand(shape, stride):
        storage = 1 + sum((size - 1) * step for size, step in zip(shape, stride))
        return torch.randn(storage).as_strided(shape, stride)

    def median_time(job):
        job()
        return statistics.median(wall_time(job) for _ in range(repeats))

    square = torch.randn(2048, 2048)
    seconds = flops = 0.0
    sgemm_times = []
    for (shape_a, shape_b, stride_a, stride_b), count in calls.items():
        a, b = operand(shape_a, stride_a), operand(shape_b, stride_b)
        product = torch.bmm if a.dim() == 3 else torch.mm
        seconds += count * median_time(functools.partial(product, a, b))
        flops += count * product_flops(shape_a, shape_b)
        sgemm_times.append(median_time(functools.partial(torch.mm, square, square)))
    gflops = flops / seconds / 1e9
    sgemm = 2 * 2048 ** 3 / statistics.median(sgemm_times) / 1e9
    return {"count": sum(calls.values()), "gflop": round(flops / 1e9, 2), "floor_s": seconds,
            "gflops": round(gflops, 1), "sgemm_gflops": round(sgemm, 1),
            "sgemm_share": round(gflops / sgemm, 3)}


def published_model(ours):
    """mexca's MEFL with the weights of ``ours``, loaded strictly."""
    try:
        from mexca.video.mefl import MEFL as PublishedMEFL
    except ImportError as error:
        raise ModuleNotFoundError(f"--published: mexca's head does not import ({error}); put "
                                  "the unpacked mexca wheel on PYTHONPATH") from None
    model = PublishedMEFL(ours.in_channels, ours.num_main_aus, ours.num_sub_aus)
    model.load_state_dict(ours.to_published_state_dict("mexca"), strict=True)
    return model


def run_mode(mode: str, args) -> dict:
    import torch
    from pyg_mefl.testing.pairs import make_pair, relative_error
    dense, ours = make_pair(CHANNELS, 27, sub_aus(27), seed=0)
    models = {"dense": dense, "pyg": ours}
    if args.published:
        models["mexca"] = published_model(ours)
    x = torch.randn(args.batch, TOKENS, CHANNELS, generator=torch.Generator().manual_seed(1))
    steps = {name: make_step(model, x, mode) for name, model in models.items()}
    if args.compiled:
        steps["pyg_compiled"] = make_step(torch.compile(ours, fullgraph=True), x, mode)
    outputs = {name: step() for name, step in steps.items()}  # warm-up (and compilation)
    check = {}
    if mode == "eval":
        check = {name: relative_error(outputs["pyg"], out) for name, out in outputs.items()
                 if name != "pyg"}
    step_s = medians(alternate(steps, args.rounds))
    floor = products_floor(matrix_products(make_step(ours, x, mode)), args.repeats)
    out = {"mode": mode, "batch": args.batch, "rounds": args.rounds, "step_s": step_s,
           "relative_difference": check, "products": floor,
           "speedup": {name: round(step_s["dense"] / step_s[name], 1)
                       for name in step_s if name.startswith("pyg")},
           "ceiling": round(step_s["dense"] / floor["floor_s"], 1),
           "remainder_s": {name: step_s[name] - floor["floor_s"]
                           for name in step_s if name.startswith("pyg")}}
    if "mexca" in step_s:
        out["dense_over_published"] = round(step_s["dense"] / step_s["mexca"], 3)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--modes", default="eval,train")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each product")
    parser.add_argument("--compiled", action="store_true", help="also time torch.compile")
    parser.add_argument("--published", action="store_true",
                        help="also time mexca's own head (mexca on PYTHONPATH, e.g. the "
                             "unpacked mexca 1.0.4 wheel)")


def run(args, log) -> dict:
    runs = []
    for mode in args.modes.split(","):
        entry = run_mode(mode, args)
        runs.append(entry)
        floor, steps = entry["products"], entry["step_s"]
        log(f"{mode}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in steps.items()) +
            f"; products {floor['count']} x, {floor['gflop']} GFLOP, floor "
            f"{floor['floor_s'] * 1e3:.0f} ms ({floor['gflops']} GFLOP/s, "
            f"{floor['sgemm_share']:.0%} of sgemm's {floor['sgemm_gflops']}); "
            f"speed-up {entry['speedup']}, ceiling {entry['ceiling']}x")
    return {"runs": runs}
