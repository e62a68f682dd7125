"""``python -m pyg_mefl predict``: face images, folders and videos to AU probabilities (CSV).

The reader runs in a background thread (decoding and the model's preprocessing, which release the
GIL for most of their work) and keeps a few batches ahead of inference. Each bad input is reported
on one line as it is met and again in the summary; the good ones are still predicted and written.
Exit status: 0 all inputs predicted, 1 some inputs failed, 2 nothing could run (bad arguments,
checkpoint or output path).
"""
import argparse
import csv
import queue
import sys
import threading
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, TextIO

import torch
from tqdm import tqdm

from ..pretrained.layouts import SOURCES
from .draw import draw_active_aus
from .inputs import (Frame, InputError, Source, collect_sources, estimate_video_frames, read_image,
                     read_video)


class UsageError(Exception):
    """A mistake that stops the whole run (exit status 2), reported as one line."""


@dataclass
class Summary:
    """What a run did: frames predicted, inputs that failed, warnings on inputs."""
    predicted: int = 0
    problems: List[InputError] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="face images, folders of them (searched recursively) or videos")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a published whole-model file (OpenGraphAU, ME-GraphAU) or a mexca "
                             "model directory")
    parser.add_argument("--source", choices=SOURCES, default=None,
                        help="force the checkpoint's origin (default: detected from its keys)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=None,
                        help="force the head: 1 (ANFL) or 2 (MEFL) (default: detected)")
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="force the backbone, e.g. resnet50, swin_tiny (default: detected)")
    parser.add_argument("--out", default="preds.csv", metavar="CSV",
                        help="where to write the probabilities ('-': standard output; "
                             "default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="N",
                        help="images per inference batch (default: %(default)s)")
    parser.add_argument("--device", default="auto", metavar="D",
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--draw", default=None, metavar="DIR",
                        help="also write each image with its active AUs (p >= 0.5) to DIR")
    parser.add_argument("--fps", type=_positive_float, default=None, metavar="F",
                        help="frames per second sampled from videos (default: every frame)")
    parser.add_argument("--min-size", type=_positive_int, default=32, metavar="PX",
                        help="smallest accepted image side in pixels (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: expected a torch device such as cpu or cuda:0, "
                         f"got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s)")
    return device


def load_model(args: argparse.Namespace, device: torch.device):
    """The whole published model named by ``--checkpoint``, in eval mode on ``device``."""
    from ..models import FaceAUModel
    overrides = {key: getattr(args, key) for key in ("source", "stage", "backbone")
                 if getattr(args, key) is not None}
    try:
        model = FaceAUModel.from_pretrained(args.checkpoint, **overrides)
    except (KeyError, ValueError, TypeError, OSError, RuntimeError, ModuleNotFoundError) as error:
        text = str(error.args[0] if isinstance(error, KeyError) and error.args else error).strip()
        message = text.splitlines()[0] if text else type(error).__name__
        if args.checkpoint not in message:
            message = f"--checkpoint {args.checkpoint}: {message}"
        raise UsageError(message) from None
    return prepare_for_inference(model, device)


def prepare_for_inference(model, device: torch.device):
    """``model`` in eval mode on ``device``, its backbone in channels-last memory format: same
    numbers to round-off, faster on CPU (ResNet-50 whole model, B = 8: 1.26 s against 1.35 s and
    4.0 s against 6.4 s in two runs of ``benchmarks/bench_predict.py`` on a busy machine)."""
    model = model.eval().to(device)
    model.backbone.to(memory_format=torch.channels_last)
    return model


def _reader(sources: Sequence[Source], transform: Callable, fps: Optional[float], min_size: int,
            keep_images: bool, out: "queue.Queue") -> None:
    """Put ``(frame, tensor)`` or ``InputError`` on ``out`` in input order, then ``None``; the
    frames keep their decoded image only if ``keep_images``."""
    try:
        for source in sources:
            late: List[InputError] = []
            try:
                frames = ([read_image(source, min_size)] if source.kind == "image"
                          else read_video(source, fps, min_size, late))
                for frame in frames:
                    tensor = transform(frame.image)
                    out.put((frame if keep_images else replace(frame, image=None), tensor))
            except InputError as error:
                out.put(error)
            for error in late:
                out.put(error)
        out.put(None)
    except BaseException as error:  # an unexpected failure: re-raised in the main thread
        out.put(error)


def read_ahead(sources: Sequence[Source], transform: Callable, fps: Optional[float],
               min_size: int, keep_images: bool, depth: int) -> Iterator:
    """The reader's items, produced by a background thread at most ``depth`` items ahead."""
    items: "queue.Queue" = queue.Queue(maxsize=depth)
    thread = threading.Thread(target=_reader, daemon=True,
                              args=(sources, transform, fps, min_size, keep_images, items))
    thread.start()
    while True:
        item = items.get()
        if item is None:
            return
        if isinstance(item, BaseException) and not isinstance(item, InputError):
            raise item
        yield item


class CSVWriter:
    """Rows ``image[, frame, time], <AU probabilities>``; frame and time only when the run has a
    video (empty for its images)."""

    def __init__(self, stream: TextIO, au_names: Sequence[str], with_frames: bool):
        self.stream, self.with_frames = stream, with_frames
        self.writer = csv.writer(stream, lineterminator="\n")
        self.writer.writerow(["image"] + (["frame", "time"] if with_frames else [])
                             + list(au_names))

    def write(self, frame: Frame, probs: Sequence[float]) -> None:
        row = [frame.source.path]
        if self.with_frames:
            row += ["" if frame.index is None else frame.index,
                    "" if frame.time is None else f"{frame.time:.3f}"]
        self.writer.writerow(row + [f"{p:.6f}" for p in probs])

    def flush(self) -> None:
        self.stream.flush()


def _drawn_path(draw_dir: Path, frame: Frame) -> Path:
    label = Path(frame.source.label)
    if frame.index is None:
        return draw_dir / label.with_suffix(".jpg")
    return draw_dir / label.with_suffix("") / f"frame_{frame.index:06d}.jpg"


def predict_sources(model, sources: Sequence[Source], writer: CSVWriter, batch_size: int,
                    device: torch.device, draw_dir: Optional[Path] = None,
                    fps: Optional[float] = None, min_size: int = 32,
                    report: Optional[Callable[[str], None]] = None,
                    progress: bool = True) -> Summary:
    """Predict every frame of ``sources`` with ``model`` (``transform``, ``predict``,
    ``au_names``) in batches of ``batch_size`` and write the rows; returns the :class:`Summary`.
    ``report`` (default: standard error) receives one line per problem or warning as it is
    met."""
    report = report or to_stderr
    summary = Summary()
    total = sum(1 if s.kind == "image" else estimate_video_frames(s, fps) for s in sources)
    batch: List = []
    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)

    def run_batch():
        images = torch.stack([tensor for _, tensor in batch]).to(device).contiguous(
            memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = model.predict(images).float().cpu().tolist()
        for (frame, _), row in zip(batch, probs):
            writer.write(frame, row)
            if draw_dir is not None:
                path = _drawn_path(draw_dir, frame)
                path.parent.mkdir(parents=True, exist_ok=True)
                draw_active_aus(frame.image, model.au_names, row).save(path, quality=90)
        writer.flush()
        summary.predicted += len(batch)
        bar.update(len(batch))
        batch.clear()

    def say(line: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            report(line)

    with bar:
        for item in read_ahead(sources, model.transform, fps, min_size,
                               keep_images=draw_dir is not None, depth=2 * batch_size):
            if isinstance(item, InputError):
                summary.problems.append(item)
                say(f"error: {item}")
                continue
            frame = item[0]
            if frame.warning:
                summary.warnings.append(f"{frame.source.path}: {frame.warning}")
                say(f"warning: {summary.warnings[-1]}")
            batch.append(item)
            if len(batch) == batch_size:
                run_batch()
        if batch:
            run_batch()
        bar.total = summary.predicted
        bar.refresh()
    return summary


def run(args: argparse.Namespace) -> int:
    """The ``predict`` command; returns the exit status."""
    try:
        device = resolve_device(args.device)
        sources, problems = collect_sources(args.inputs)
        for problem in problems:
            to_stderr(f"error: {problem}")
        model = load_model(args, device)
        draw_dir = Path(args.draw) if args.draw else None
        with ExitStack() as stack:
            if args.out == "-":
                stream = sys.stdout
            else:
                try:
                    stream = stack.enter_context(open(args.out, "w", newline=""))
                except OSError as error:
                    raise UsageError(f"--out {args.out}: cannot write: "
                                     f"{error.strerror or error}") from None
            if draw_dir is not None:
                try:
                    draw_dir.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise UsageError(f"--draw {args.draw}: cannot create the folder: "
                                     f"{error.strerror or error}") from None
            writer = CSVWriter(stream, model.au_names, any(s.kind == "video" for s in sources))
            summary = predict_sources(model, sources, writer, args.batch_size, device, draw_dir,
                                      args.fps, args.min_size, to_stderr,
                                      progress=not args.quiet and sys.stderr.isatty())
    except UsageError as error:
        to_stderr(f"pyg_mefl predict: error: {error}")
        return 2
    except torch.OutOfMemoryError:
        to_stderr(f"pyg_mefl predict: error: out of memory on {args.device} at --batch-size "
                  f"{args.batch_size}; try a smaller batch")
        return 2
    except KeyboardInterrupt:
        to_stderr("pyg_mefl predict: interrupted; the rows written so far are kept")
        return 130
    failed = problems + summary.problems
    destination = "standard output" if args.out == "-" else args.out
    to_stderr(f"predicted {summary.predicted} image(s) from {len(sources)} file(s) into "
              f"{destination}"
              + (f"; {len(summary.warnings)} warning(s)" if summary.warnings else ""))
    if failed:
        to_stderr(f"{len(failed)} input(s) failed:")
        for problem in failed:
            to_stderr(f"  {problem}")
        return 1
    return 0
