"""``python -m pyg_mefl predict``: photos, folders and videos of people to AU probabilities
(CSV), one row per input, frame and face.

Faces are found with the detector of :mod:`pyg_mefl.faces` (``--faces whole`` takes each image
as a face crop). The reader runs in a background thread (decoding releases the GIL for most of
its work) and keeps a few frames ahead of inference. Each bad input is reported on one line as it
is met and again in the summary; the good ones are still predicted and written. Exit status: 0
all inputs predicted (a frame without a face is a row with ``success`` 0, not an error), 1 some
inputs failed, 2 nothing could run (bad arguments, checkpoint or output path).
"""
import argparse
import csv
import json
import sys
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, TextIO

import torch
from tqdm import tqdm

from ..faces import DEFAULT_MARGIN, LANDMARK_NAMES, MEXCA_DETECTOR, FaceAUPipeline, FaceDetector
from ..faces.pipeline import FaceRow, ahead, read_source
from ..io.media import Frame, InputError, Source, collect_sources, estimate_video_frames, video_info
from ..models.model_dir import check_thresholds
from ..pretrained.layouts import SOURCES
from ..io.video_writer import VideoWriter
from . import split
from .draw import draw_faces, draw_faces_in_frame

DEFAULT_MODEL = "mexca/mefarg-open-graph-au-resnet50-stage-2"  # mexca's default hub model


class UsageError(Exception):
    """A mistake that stops the whole run (exit status 2), reported as one line."""


@dataclass
class Summary:
    """What a run did: frames and faces predicted, inputs that failed, warnings on inputs."""
    frames: int = 0
    faces: int = 0
    problems: List[InputError] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="photos and videos of people, or folders of them (searched "
                             "recursively)")
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL, metavar="PATH",
                        help="a pyg_mefl model directory (save_pretrained), a published "
                             "whole-model file (OpenGraphAU, ME-GraphAU), a mexca model "
                             "directory or a Hugging Face hub id (default: %(default)s, "
                             "from the local Hugging Face cache or downloaded)")
    parser.add_argument("--source", choices=SOURCES, default=None,
                        help="force the checkpoint's origin (default: detected from its keys)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=None,
                        help="force the head: 1 (ANFL) or 2 (MEFL) (default: detected)")
    parser.add_argument("--backbone", default=None, metavar="NAME",
                        help="force the backbone, e.g. resnet50, swin_tiny (default: detected)")
    parser.add_argument("--out", default="preds.csv", metavar="CSV",
                        help="where to write the rows ('-': standard output; default: "
                             "%(default)s); the run's settings go to <CSV>.json beside it")
    parser.add_argument("--faces", choices=("detect", "whole"), default="detect",
                        help="detect: find the faces in each photo and frame (default); whole: "
                             "each input is a face crop already")
    parser.add_argument("--crop", choices=("auto", "square", "aligned"), default="auto",
                        help="how faces are cut for the model: auto (mexca models as mexca "
                             "cuts them, others square), square, or aligned on the 5 landmarks "
                             "(default: %(default)s)")
    parser.add_argument("--margin", type=_non_negative_float, default=DEFAULT_MARGIN,
                        metavar="F", help="margin of square and aligned crops, as a fraction of "
                                          "the box's longer side (default: %(default)s)")
    parser.add_argument("--min-face-size", type=_positive_int,
                        default=MEXCA_DETECTOR["min_face_size"], metavar="PX",
                        help="smallest face the detector looks for (default: %(default)s)")
    parser.add_argument("--min-box-size", type=_non_negative_float,
                        default=MEXCA_DETECTOR["min_box_size"], metavar="PX",
                        help="faces whose box is narrower and lower than this are dropped "
                             "(default: %(default)s, as mexca)")
    parser.add_argument("--batch-size", type=_positive_int, default=8, metavar="N",
                        help="faces per inference batch (default: %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="fp32: exact to the published models (default); bf16: bfloat16 "
                             "autocast of the model, faster on CPUs with AMX / AVX-512-BF16 and "
                             "on GPUs; fp16: CUDA only")
    parser.add_argument("--device", default="auto", metavar="D",
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--draw", default=None, metavar="DIR",
                        help="also draw each face's box, landmarks, id and active AUs (p >= "
                             "the AU's threshold: 0.5, or a model directory's own): photos "
                             "as DIR/<name>.jpg, videos as DIR/<name>.mp4 at their frame rate "
                             "and size")
    parser.add_argument("--draw-frames", action="store_true",
                        help="with --draw: each video frame as DIR/<name>/frame_000123.jpg "
                             "instead of a video")
    parser.add_argument("--fps", type=_positive_float, default=None, metavar="F",
                        help="frames per second sampled from videos (default: every frame)")
    parser.add_argument("--min-size", type=_positive_int, default=None, metavar="PX",
                        help="smallest accepted image side in pixels (default: 32 with --faces "
                             "whole, else 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _number(text: str, zero_allowed: bool) -> float:
    expected = "a number >= 0" if zero_allowed else "a positive number"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (value >= 0 if zero_allowed else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    return _number(text, zero_allowed=True)


def _positive_float(text: str) -> float:
    return _number(text, zero_allowed=False)


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
    """The whole model named by ``--checkpoint``, in eval mode on ``device``."""
    overrides = {key: getattr(args, key) for key in ("source", "stage", "backbone")
                 if getattr(args, key) is not None}
    return prepare_for_inference(open_checkpoint(args.checkpoint, "--checkpoint ", **overrides),
                                 device)


def open_checkpoint(checkpoint: str, option: str = "", **overrides):
    """``FaceAUModel.from_pretrained(checkpoint, **overrides)``; its errors as one
    :class:`UsageError` line that names ``checkpoint`` (after ``option``)."""
    from ..models import FaceAUModel
    try:
        return FaceAUModel.from_pretrained(checkpoint, **overrides)
    except (KeyError, ValueError, TypeError, OSError, RuntimeError, ModuleNotFoundError) as error:
        text = str(error.args[0] if isinstance(error, KeyError) and error.args else error).strip()
        message = text.splitlines()[0] if text else type(error).__name__
        if checkpoint not in message:
            message = f"{option}{checkpoint}: {message}"
        raise UsageError(message) from None


def prepare_for_inference(model, device: torch.device):
    """``model`` in eval mode on ``device``, its backbone in channels-last memory format: same
    numbers to round-off, faster on CPU (ResNet-50 whole model, B = 8: 1.26 s against 1.35 s and
    4.0 s against 6.4 s in two runs of ``python -m benchmarks predict`` on a busy machine)."""
    model = model.eval().to(device)
    model.backbone.to(memory_format=torch.channels_last)
    return model


def read_ahead(sources: Sequence[Source], fps: Optional[float], min_size: int,
               depth: int) -> Iterator:
    """The frames and problems of ``sources`` in input order, decoded by a background thread at
    most ``depth`` items ahead."""
    return ahead((item for source in sources for item in read_source(source, fps, min_size)),
                 depth)


LEADING_COLUMNS = ["input", "frame", "timestamp", "face_id", "confidence", "success",
                   "x1", "y1", "x2", "y2"]
LANDMARK_COLUMNS = [f"{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy"]


class CSVWriter:
    """One row per input, frame and face: :data:`LEADING_COLUMNS`, the 5 landmarks, then one
    column per AU; empty cells where a frame has no face (or a whole image no landmarks)."""

    def __init__(self, stream: TextIO, au_names: Sequence[str]):
        self.stream = stream
        self.writer = csv.writer(stream, lineterminator="\n")
        self.writer.writerow(LEADING_COLUMNS + LANDMARK_COLUMNS + list(au_names))
        self.num_aus = len(au_names)

    def write(self, row: FaceRow) -> None:
        def cells(values, digits):
            return [f"{v:.{digits}f}" for v in values] if values is not None else None

        self.writer.writerow(
            [row.input, row.frame, f"{row.timestamp:.6f}",
             "" if row.face_id is None else row.face_id,
             "" if row.confidence is None else f"{row.confidence:.6f}", int(row.success)]
            + (cells(row.box, 2) or [""] * 4) + (cells(row.landmarks, 2) or [""] * 10)
            + (cells(row.probs, 6) or [""] * self.num_aus))

    def flush(self) -> None:
        self.stream.flush()


class Drawings:
    """What ``--draw DIR`` writes: each photo as ``DIR/<name>.jpg`` with its faces and a panel of
    their active AUs; each video as ``DIR/<name>.mp4`` at its frame rate and size, its faces
    drawn in each frame, or with ``frames`` its frames as ``DIR/<name>/frame_000123.jpg``."""

    def __init__(self, folder: Path, au_names: Sequence[str], fps: Optional[float],
                 frames: bool = False, thresholds: Optional[Sequence[float]] = None):
        self.folder, self.au_names, self.fps, self.frames = folder, au_names, fps, frames
        self.thresholds = 0.5 if thresholds is None else list(thresholds)  # per AU
        self.video: Optional[VideoWriter] = None
        self.video_source: Optional[Source] = None

    def add(self, frame: Frame, rows: List[FaceRow]) -> None:
        label = Path(frame.source.label)
        if frame.source.kind == "image":
            path = self.folder / label.with_suffix(".jpg")
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_faces(frame.image, rows, self.au_names, self.thresholds).save(path, quality=90)
        elif self.frames:
            path = self.folder / label.with_suffix("") / f"frame_{frame.index:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_faces(frame.image, rows, self.au_names, self.thresholds).save(path, quality=90)
        else:
            if self.video_source is not frame.source:
                self.close()
                self.video = VideoWriter(str(self._video_path(frame.source)),
                                         self._rate(frame.source))
                self.video_source = frame.source
            self.video.write(draw_faces_in_frame(frame.image, rows, self.au_names,
                                                 self.thresholds), frame.time)

    def _video_path(self, source: Source) -> Path:
        path = self.folder / Path(source.label).with_suffix(".mp4")
        if path.resolve() == Path(source.path).resolve():  # never over the input itself
            path = path.with_name(f"{path.stem}_drawn.mp4")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _rate(self, source: Source) -> Optional[float]:
        rate = (video_info(source.path) or {}).get("fps")
        return min(rate, self.fps) if rate and self.fps else rate or self.fps

    def close(self) -> None:
        if self.video is not None:
            self.video.close()
        self.video, self.video_source = None, None


def predict_sources(pipeline: FaceAUPipeline, sources: Sequence[Source], writer: CSVWriter,
                    drawings: Optional[Drawings] = None, min_size: int = 1,
                    report: Optional[Callable[[str], None]] = None,
                    progress: bool = True) -> Summary:
    """Run ``pipeline`` on every frame of ``sources`` and write its rows as they come; returns
    the :class:`Summary`. ``report`` (default: standard error) receives one line per problem or
    warning as it is met."""
    report = report or to_stderr
    summary = Summary()
    total = sum(1 if s.kind == "image" else estimate_video_frames(s, pipeline.fps)
                for s in sources)
    bar = tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    frames = {}  # the decoded frames whose rows are still to come, by (input, frame)

    def say(line: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            report(line)

    def decoded():
        for item in read_ahead(sources, pipeline.fps, min_size, depth=16):
            if isinstance(item, Frame):
                if item.warning:
                    summary.warnings.append(f"{item.source.path}: {item.warning}")
                    say(f"warning: {summary.warnings[-1]}")
                frames[(item.source.path, item.index or 0)] = item
            yield item

    def finish(key, rows: List[FaceRow]) -> None:
        frame = frames.pop(key)
        if drawings is not None:
            drawings.add(frame, rows)
        summary.frames += 1
        summary.faces += sum(row.success for row in rows)
        writer.flush()
        bar.update(1)

    with bar:
        current, rows = None, []
        for item in pipeline.rows_of_frames(decoded()):
            if isinstance(item, InputError):
                summary.problems.append(item)
                say(f"error: {item}")
                continue
            key = (item.input, item.frame)
            if current is not None and key != current:
                finish(current, rows)
                rows = []
            current = key
            writer.write(item)
            rows.append(item)
        if current is not None:
            finish(current, rows)
        bar.total = summary.frames
        bar.refresh()
    return summary


def build_pipeline(args: argparse.Namespace, model) -> FaceAUPipeline:
    detector = None
    if args.faces == "detect":
        try:
            detector = FaceDetector(min_face_size=args.min_face_size,
                                    min_box_size=args.min_box_size, device=model_device(model))
        except (ValueError, ModuleNotFoundError) as error:
            raise UsageError(str(error)) from None
    try:
        return FaceAUPipeline(model, detector, crop=args.crop, margin=args.margin,
                              batch_size=args.batch_size, fps=args.fps,
                              precision=args.precision)
    except ValueError as error:
        option = "--precision" if "precision" in str(error) else "--crop"
        raise UsageError(f"{option} {getattr(args, option[2:])}: {error}") from None


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def run_record(args: argparse.Namespace, pipeline: FaceAUPipeline,
               sources: Sequence[Source]) -> dict:
    """What the sidecar ``<out>.json`` records: the model, the face settings, each video's
    frame rate and the package versions."""
    model = pipeline.model
    thresholds = check_thresholds(model.thresholds, model.au_names)  # 0.5 without its own
    threshold = thresholds[0] if len(set(thresholds)) == 1 else None  # one for all AUs, if so
    return {
        "checkpoint": args.checkpoint, "source": model.source, "stage": model.stage,
        "backbone": getattr(model, "backbone_name", None), "au_names": list(model.au_names),
        "faces": args.faces, "crop": pipeline.crop if pipeline.detector else None,
        "margin": pipeline.margin if pipeline.crop in ("square", "aligned") else None,
        "detector": pipeline.detector.settings() if pipeline.detector else None,
        "tracker": {"min_iou": pipeline.tracker.min_iou, "max_gap": pipeline.tracker.max_gap},
        "fps_sampled": args.fps, "threshold": threshold, "precision": pipeline.precision,
        "thresholds": dict(zip(model.au_names, thresholds)),
        "videos": {s.path: video_info(s.path) for s in sources if s.kind == "video"},
        "versions": package_versions(),
    }


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("pyg_mefl", "torch", "torchvision", "torch_geometric", "timm",
                 "facenet-pytorch", "av", "huggingface_hub", "safetensors", "Pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    return out


def run(args: argparse.Namespace) -> int:
    """The ``predict`` command; returns the exit status. Under ``torchrun`` each process takes
    its share of the inputs (:mod:`~pyg_mefl.cli.split`)."""
    rank, processes = split.world()
    try:
        device = resolve_device(args.device)
        if processes > 1:
            if args.out == "-":
                raise UsageError("--out -: under torchrun the processes write one CSV file; "
                                 "give its path")
            device = split.join(device)
        sources, problems = collect_sources(args.inputs)
        for problem in problems if rank == 0 else []:
            to_stderr(f"error: {problem}")
        mine = split.share(sources, rank, processes)
        if args.out != "-" and not Path(args.out).resolve().parent.is_dir():  # before the model
            raise UsageError(f"--out {args.out}: cannot write: its folder does not exist")
        model = load_model(args, device)
        pipeline = build_pipeline(args, model)
        min_size = args.min_size or (32 if args.faces == "whole" else 1)
        draw_dir = Path(args.draw) if args.draw else None
        target = split.part_path(args.out, rank) if processes > 1 else args.out
        with ExitStack() as stack:
            if target == "-":
                stream = sys.stdout
            else:
                try:
                    stream = stack.enter_context(open(target, "w", newline=""))
                except OSError as error:
                    raise UsageError(f"--out {args.out}: cannot write: "
                                     f"{error.strerror or error}") from None
            if draw_dir is not None:
                try:
                    draw_dir.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise UsageError(f"--draw {args.draw}: cannot create the folder: "
                                     f"{error.strerror or error}") from None
            writer = CSVWriter(stream, model.au_names)
            drawings = None if draw_dir is None else stack.enter_context(closing(Drawings(
                draw_dir, model.au_names, args.fps, frames=args.draw_frames,
                thresholds=model.thresholds)))
            summary = predict_sources(pipeline, mine, writer, drawings, min_size, to_stderr,
                                      progress=not args.quiet and sys.stderr.isatty()
                                      and rank == 0)
        frames, faces, failed = summary.frames, summary.faces, problems + summary.problems
        if processes > 1:
            frames, faces, failed = split.gather(frames, faces, summary.problems, problems)
            if rank == 0:
                split.merge(args.out, sources, processes)
        if args.out != "-" and rank == 0:
            record = run_record(args, pipeline, sources)
            record["processes"] = processes
            with open(args.out + ".json", "w") as stream:
                json.dump(record, stream, indent=2)
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
    finally:
        split.leave()
    if rank != 0:  # process 0 reports the whole run and carries its exit status
        return 0
    destination = "standard output" if args.out == "-" else args.out
    found = (f" with {faces} face(s)" if args.faces == "detect" else "")
    to_stderr(f"predicted {frames} frame(s){found} from {len(sources)} file(s) into "
              f"{destination}" + (f" by {processes} processes" if processes > 1 else "")
              + (f"; {len(summary.warnings)} warning(s)" if summary.warnings else ""))
    if failed:
        to_stderr(f"{len(failed)} input(s) failed:")
        for problem in failed:
            to_stderr(f"  {problem}")
        return 1
    return 0
