"""The exported ONNX model in onnxruntime against the eager model, on the CPU: one process,
the two alternating over the rounds, median seconds per batch and their ratio.

The model is mexca's default in size (ResNet-50 trunk, 512-channel head, 27 + 14 AUs) with
random weights; its inputs are random crops of the model's input size. Also printed: the largest
difference of the probabilities (the export's check in the tests is 1e-5 on real photos).

    python benchmarks/bench_onnx.py [--batches 1 8] [--rounds 5] [--threads N] [--out JSON]
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from published_models import (ReferenceModel, random_backbone_state,  # noqa: E402
                              reference_head, whole_model_state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    import onnxruntime
    from pyg_mefl import FaceAUModel
    from pyg_mefl.models.onnx_export import export_onnx
    torch.set_num_threads(args.threads)
    head = reference_head(2, "mexca", 512, 27, 14, 1)
    trunk = random_backbone_state("resnet50", 1)
    reference = ReferenceModel("resnet50", trunk, head, 512, 1)
    model = FaceAUModel.from_pretrained(
        whole_model_state(trunk, reference.global_linear, head, 2, "mexca")).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, Path(folder) / "model.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    print(f"threads {args.threads}, median of {args.rounds} rounds, eager and onnxruntime "
          f"alternating")
    print("| B | eager | onnxruntime | eager / onnxruntime | max abs difference |")
    print("|---|---|---|---|---|")
    results = []
    for batch in args.batches:
        images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        eager, runtime = [], []
        model.predict(images), session.run(None, {"images": images.numpy()})  # warm-up
        for _ in range(args.rounds):
            start = time.perf_counter()
            expected = model.predict(images)
            eager.append(time.perf_counter() - start)
            start = time.perf_counter()
            probs, = session.run(None, {"images": images.numpy()})
            runtime.append(time.perf_counter() - start)
        difference = (torch.from_numpy(probs) - expected).abs().max().item()
        e, r = statistics.median(eager), statistics.median(runtime)
        print(f"| {batch} | {e * 1000:.0f} ms | {r * 1000:.0f} ms | {e / r:.2f}x | "
              f"{difference:.1e} |")
        results.append({"batch": batch, "eager_s": eager, "onnxruntime_s": runtime,
                        "ratio": e / r, "max_abs_difference": difference})
    if args.out:
        Path(args.out).write_text(json.dumps({"threads": args.threads, "rounds": args.rounds,
                                              "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
