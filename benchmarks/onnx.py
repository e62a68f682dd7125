"""The exported ONNX model in onnxruntime against the eager model on the CPU.

The model is mexca's default in size (ResNet-50 trunk, 512-channel head, 27 + 14 AUs) with
random weights, exported with pyg_mefl's exporter (``python -m pyg_mefl export``); its inputs
are random crops of the model's input size. Eager ``FaceAUModel.predict`` and onnxruntime's CPU
provider alternate in one process after a warm-up; the median seconds per batch, their ratio and
the largest difference of the probabilities (the export's check in the tests is 1e-5 on real
photos).

    python -m benchmarks onnx [--batches 1 8] [--rounds 5]    # results/onnx.json
"""
import tempfile
from pathlib import Path

import torch

from .measure import alternate, medians
from .video import model_weights

__all__ = ["add_arguments", "render", "run"]


def add_arguments(parser) -> None:
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8],
                        help="face crops per call")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")


def _model():
    from pyg_mefl import FaceAUModel
    _, state = model_weights()  # the video benchmark's mexca ResNet-50 model
    return FaceAUModel.from_pretrained(state).eval()


def run(args, log) -> dict:
    import onnxruntime
    from pyg_mefl.models.onnx_export import export_onnx
    model = _model()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    rows = []
    for batch in args.batches:
        images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        inputs = {"images": images.numpy()}
        expected = model.predict(images)
        probs, = session.run(None, inputs)  # (and the warm-up of both)
        times = alternate({"eager": lambda: model.predict(images),
                           "onnxruntime": lambda: session.run(None, inputs)}, args.rounds)
        median = medians(times)
        difference = (torch.from_numpy(probs) - expected).abs().max().item()
        log(f"B={batch}: eager {median['eager']:.3f} s, onnxruntime "
            f"{median['onnxruntime']:.3f} s")
        rows.append({"batch": batch, "eager_s": times["eager"],
                     "onnxruntime_s": times["onnxruntime"],
                     "ratio": median["eager"] / median["onnxruntime"],
                     "max_abs_difference": difference})
    return {"rounds": args.rounds, "results": rows}


def render(results) -> str:
    lines = ["| B | eager `predict` | onnxruntime | eager / onnxruntime | max abs difference |",
             "|---|---|---|---|---|"]
    for row in results["results"]:
        eager, runtime = (sorted(row[k])[len(row[k]) // 2] for k in ("eager_s", "onnxruntime_s"))
        lines.append(f"| {row['batch']} | {eager * 1000:.0f} ms | {runtime * 1000:.0f} ms | "
                     f"**{row['ratio']:.1f}x** | {row['max_abs_difference']:.1e} |")
    return "\n".join(lines)
