"""Images to AU probabilities with a whole published model: pyg_mefl against the published dense
formulation, and ``python -m pyg_mefl predict`` on a folder of images.

Run ``python -m benchmarks predict`` (results in ``benchmarks/results/predict.json``).

Models: ResNet-50, stage 2 (MEFL), 27 + 14 AUs, C = 512, B = 8 images of 224x224 (``--batch``). The
dense model is the published whole model written from SPEC: torchvision's ResNet-50 trunk, then
``pyg_mefl.testing.dense_reference.DenseLinearBlock(2048, 512)`` and ``DenseMEFL(512, 27, 14)``, in
eval mode under ``torch.no_grad()`` (the published demo). Its weights are written to a file in
OpenGraphAU's layout, and pyg_mefl's model is ``FaceAUModel.from_pretrained`` of that file, run with
``predict`` (eval, ``torch.inference_mode``): the same weights, checked by the largest difference of
the probabilities.

Method:
    Memory. Each implementation's peak is measured in a fresh worker process (this file with
    ``--worker --task memory``), with ``measure.measure_step``: after one warm-up step (lazy
    initialisation, thread pools, oneDNN primitives), garbage is collected, the freed heap is
    returned to the kernel and the resident-set high-water mark reset; the peak of the next
    step is VmHWM after it less the resident set before it (see the ``head`` mode). The workers
    alternate (dense, pyg_mefl, pyg_mefl as the command runs it, dense, ...); the median is
    reported.

    Time. One worker process times every variant, alternating one step of each per round after
    a warm-up step of each, and reports medians: dense; pyg_mefl ``predict``; the same as the
    predict command prepares it (channels-last backbone and input); the backbone with its
    global linear block alone (images to tokens); the stage-2 head alone and, when stage 1
    loads, the stage-1 head alone on those tokens.

    Folder. 64 JPEG face crops (``--folder-images``) of 256x256 are written to a temporary folder;
    the predict command's pipeline (``pyg_mefl.cli.predict.predict_sources`` with ``--faces whole``:
    decoding in a reader thread, batched inference, CSV rows) runs over them at several batch sizes;
    the model is loaded beforehand, as a long run amortises it. Decoding and preprocessing alone are
    timed too, to show how much of them the reader thread hides behind inference.

    The machine may be shared: the load average at the start and the end are recorded.
"""
import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from .machine import add_wait_policy_argument, sgemm_rate, wait_policy
from .measure import alternate, measure_step, medians, run_worker
from .report import fmt_mb, fmt_ratio, fmt_time

__all__ = ["add_arguments", "render", "run", "worker"]

MAIN_AUS, SUB_AUS, CHANNELS, SEED = 27, 14, 512, 0
FOLDER_SIDE = 256
FOLDER_BATCHES = (1, 8, 32)


def dense_model():
    """The published whole model (SPEC §10) from torchvision and the dense reference."""
    import torch
    import torchvision
    from pyg_mefl.testing.dense_reference import DenseLinearBlock, DenseMEFL
    torch.manual_seed(SEED)
    model = torch.nn.ModuleDict({"resnet": torchvision.models.resnet50(),
                                 "global_linear": DenseLinearBlock(2048, CHANNELS),
                                 "head": DenseMEFL(CHANNELS, MAIN_AUS, SUB_AUS)})
    return model.eval()


def dense_forward(model, images):
    import torch
    r = model["resnet"]
    with torch.no_grad():
        maps = r.layer4(r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(images))))))))
        return model["head"](model["global_linear"](maps.flatten(2).transpose(1, 2)))["probs"]


def write_checkpoints(folder: Path) -> dict:
    """The dense model's weights as an OpenGraphAU stage-2 file, and a stage-1 file with the
    same backbone, global linear and AU blocks (random GNN and similarity weights)."""
    import torch
    from pyg_mefl.testing.dense_reference import to_layout, wrap
    model = dense_model()
    backbone = {f"backbone.{k}": v for k, v in model["resnet"].state_dict().items()
                if not k.startswith("fc.")}
    stage2 = to_layout(model["head"].state_dict(), "opengraphau", whole_model=True,
                       global_linear=model["global_linear"].state_dict(), backbone=backbone)
    paths = {"stage2": folder / "stage2.pth", "stage1": folder / "stage1.pth"}
    torch.save(wrap(stage2, state_dict_wrapper=True), paths["stage2"])
    generator = torch.Generator().manual_seed(SEED + 1)
    stage1 = {k: v for k, v in stage2.items()
              if not k.startswith(("head.edge_extractor.", "head.gnn."))}
    for name in ("U", "V"):
        stage1[f"head.gnn.{name}.weight"] = torch.randn(CHANNELS, CHANNELS, generator=generator) \
            * (2 / CHANNELS) ** 0.5
        stage1[f"head.gnn.{name}.bias"] = torch.zeros(CHANNELS)
    for stat, value in (("weight", torch.ones(MAIN_AUS)), ("bias", torch.zeros(MAIN_AUS)),
                        ("running_mean", torch.zeros(MAIN_AUS)),
                        ("running_var", torch.ones(MAIN_AUS)),
                        ("num_batches_tracked", torch.tensor(0))):
        stage1[f"head.gnn.bnv.{stat}"] = value
    torch.save(wrap(stage1, state_dict_wrapper=True), paths["stage1"])
    return {k: str(v) for k, v in paths.items()}


def images(batch: int):
    import torch
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(SEED + 2))


def load_pyg(path: str, as_the_command_runs: bool = False):
    """pyg_mefl's model of the file: as ``from_pretrained`` gives it (eval), or prepared as the
    predict command runs it (channels-last backbone)."""
    from pyg_mefl.cli.predict import prepare_for_inference
    from pyg_mefl.models import FaceAUModel
    import torch
    model = FaceAUModel.from_pretrained(path)
    return prepare_for_inference(model, torch.device("cpu")) if as_the_command_runs \
        else model.eval()


def command_input(x):
    import torch
    return x.contiguous(memory_format=torch.channels_last)


def memory_worker(args) -> dict:
    x = images(args.batch)
    if args.impl == "dense":
        model = dense_model()
        step = lambda: dense_forward(model, x)  # noqa: E731
    else:
        command = args.impl == "pyg_command"
        model = load_pyg(args.checkpoint, command)
        x = command_input(x) if command else x
        step = lambda: model.predict(x)  # noqa: E731
    step()
    _, probe = measure_step(step)
    return probe


def time_worker(args) -> dict:
    import torch
    from pyg_mefl.testing.pairs import relative_error
    paths = json.loads(args.checkpoint)
    x = images(args.batch)
    dense, ours = dense_model(), load_pyg(paths["stage2"])
    command, x_command = load_pyg(paths["stage2"], True), command_input(x)
    with torch.inference_mode():
        tokens = ours.backbone(x)
    steps = {"dense": lambda: dense_forward(dense, x), "pyg": lambda: ours.predict(x),
             "pyg_command": lambda: command.predict(x_command),
             "backbone": lambda: _inference(ours.backbone, x),
             "stage2_head": lambda: _inference(ours.head, tokens)}
    out = {}
    try:
        stage1 = load_pyg(paths["stage1"])
        steps["stage1_head"] = lambda: _inference(stage1.head, tokens)
    except Exception as error:  # reported, not fatal: stage 1 may not load in this version
        out["stage1_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    warm = {name: step() for name, step in steps.items()}
    out["max_abs_diff"] = float((warm["pyg"] - warm["dense"]).abs().max())
    out["rel_error"] = relative_error(warm["pyg"], warm["dense"])
    out["command_max_abs_diff"] = float((warm["pyg_command"] - warm["dense"]).abs().max())
    out["times_s"] = alternate(steps, args.repeats)
    out["median_s"] = medians(out["times_s"])
    return out


def _inference(module, x):
    import torch
    with torch.inference_mode():
        return module(x)


def folder_worker(args) -> dict:
    import numpy as np
    from PIL import Image
    from pyg_mefl.io.media import collect_sources, read_image
    from pyg_mefl.cli.predict import CSVWriter, predict_sources
    from pyg_mefl.faces import FaceAUPipeline
    model = load_pyg(args.checkpoint, True)
    out = {"images": args.folder_images, "side": FOLDER_SIDE}
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(SEED)
        for k in range(args.folder_images):
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((FOLDER_SIDE, FOLDER_SIDE), Image.BICUBIC).save(
                Path(folder) / f"face_{k:03d}.jpg", quality=90)
        sources, problems = collect_sources([folder])
        assert not problems and len(sources) == args.folder_images

        def run(batch_size, subset=sources):
            writer = CSVWriter(io.StringIO(), model.au_names)
            pipeline = FaceAUPipeline(model, detector=None, batch_size=batch_size)
            start = time.perf_counter()
            summary = predict_sources(pipeline, subset, writer, min_size=32, progress=False)
            assert summary.frames == len(subset) and not summary.problems
            return time.perf_counter() - start

        run(8, sources[:8])  # warm-up
        start = time.perf_counter()
        for source in sources:
            model.transform(read_image(source, 32).image)
        out["decode_and_preprocess_s"] = time.perf_counter() - start
        out["predict_s"] = {}
        for batch_size in map(int, args.folder_batches.split(",")):
            out["predict_s"][batch_size] = run(batch_size)
    out["images_per_s"] = {b: args.folder_images / s for b, s in out["predict_s"].items()}
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="images a step")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--memory-repeats", type=int, default=2,
                        help="fresh processes per implementation for the peak memory")
    parser.add_argument("--folder-images", type=int, default=64,
                        help="JPEG crops in the folder predict runs over")
    parser.add_argument("--folder-batches", default=",".join(map(str, FOLDER_BATCHES)),
                        help="batch sizes of the folder runs, comma-separated")
    add_wait_policy_argument(parser)
    parser.add_argument("--task", choices=("memory", "time", "folder"), help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("dense", "pyg", "pyg_command"), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)


def render(results) -> str:
    t, m, f = results["time"]["median_s"], results["memory"], results["folder"]
    lines = [f"| B = {results['batch']} images -> probabilities | time | speed-up | peak memory | "
             f"memory ratio |", "|---|---|---|---|---|",
             f"| dense (the published model) | {fmt_time(t['dense'])} | 1x | "
             f"{fmt_mb(m['dense_mb'])} | 1x |"]
    for impl, label in (("pyg", "pyg_mefl `model.predict`"),
                        ("pyg_command", "pyg_mefl as `predict` runs it (channels-last)")):
        lines.append(f"| {label} | {fmt_time(t[impl])} | {fmt_ratio(t['dense'] / t[impl])} | "
                     f"{fmt_mb(m[impl + '_mb'])} | {fmt_ratio(m['dense_mb'] / m[impl + '_mb'])} |")
    lines += ["", f"| pyg_mefl part (B = {results['batch']}) | time |", "|---|---|"]
    for name, label in (("backbone", "ResNet-50 + global linear (images -> tokens)"),
                        ("stage1_head", "stage-1 head (ANFL) on the tokens"),
                        ("stage2_head", "stage-2 head (MEFL) on the tokens")):
        if name in t:
            lines.append(f"| {label} | {fmt_time(t[name])} |")
    lines += ["", f"| `predict` on a folder of {f['images']} JPEGs ({FOLDER_SIDE} px), decoding "
              "included | images/s |",
              "|---|---|"]
    for batch_size, rate in f["images_per_s"].items():
        lines.append(f"| --batch-size {batch_size} | {rate:.1f} |")
    lines.append(f"| (decoding and preprocessing alone) | "
                 f"{f['images'] / f['decode_and_preprocess_s']:.0f} |")
    return "\n".join(lines)


def worker(args) -> dict:
    tasks = {"memory": memory_worker, "time": time_worker, "folder": folder_worker}
    return tasks[args.task](args)


def run(args, log) -> dict:
    machine = {"sgemm_gflops": round(sgemm_rate(args.threads), 1),
               "omp_wait_policy": wait_policy(args)}
    log(f"sgemm {machine['sgemm_gflops']} GFLOP/s; OMP_WAIT_POLICY {machine['omp_wait_policy']} "
        "(workers)")
    results = {"machine": machine, "method": " ".join(__doc__.split("Method:")[1].split()),
               "batch": args.batch, "aus": [MAIN_AUS, SUB_AUS]}

    def measure(task, **options):
        result = run_worker("predict", args, task=task, batch=args.batch, **options)
        if "error" in result:
            raise SystemExit(f"{task} worker failed: {result['error']}")
        return result

    with tempfile.TemporaryDirectory() as folder:
        paths = write_checkpoints(Path(folder))
        peaks = {"dense": [], "pyg": [], "pyg_command": []}
        for _ in range(args.memory_repeats):
            for impl in peaks:
                probe = measure("memory", impl=impl, checkpoint=paths["stage2"])
                peaks[impl].append(probe["peak_mb"])
                log(f"peak memory {impl}: {fmt_mb(probe['peak_mb'])}")
        results["memory"] = {f"{impl}_runs_mb": runs for impl, runs in peaks.items()}
        results["memory"].update({f"{impl}_mb": statistics.median(runs)
                                  for impl, runs in peaks.items()})
        timing = measure("time", repeats=args.repeats, checkpoint=json.dumps(paths))
        results["time"] = timing
        log("medians: " + ", ".join(f"{k} {fmt_time(v)}" for k, v in timing["median_s"].items())
            + f"; max |pyg - dense| {timing['max_abs_diff']:.1e}")
        folder_run = measure("folder", checkpoint=paths["stage2"],
                             folder_images=args.folder_images,
                             folder_batches=args.folder_batches)
        results["folder"] = folder_run
        log("folder: " + ", ".join(f"B={b} {r:.1f} img/s"
                                   for b, r in folder_run["images_per_s"].items()))
    t = timing["median_s"]
    memory = results["memory"]
    results["speedup"] = {impl: t["dense"] / t[impl] for impl in ("pyg", "pyg_command")}
    results["memory_ratio"] = {impl: memory["dense_mb"] / memory[f"{impl}_mb"]
                               for impl in ("pyg", "pyg_command")}
    return results
