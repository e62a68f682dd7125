"""Readers for ``predict``: image files, folders of images and videos, as a stream of RGB frames.

Every problem with one input is an :class:`InputError` that names the file and what is wrong;
the caller reports it and goes on with the other inputs.

Image modes are converted to RGB as follows (the published loaders call ``convert("RGB")``):

- 8-bit modes (grayscale, palette, RGBA, CMYK, YCbCr, bilevel) with Pillow's ``convert("RGB")``,
  exactly as the published code, so their numbers match. An alpha channel is dropped; when it holds
  transparent pixels a warning says so, because the colour under them is then undefined.
- 16-bit grayscale (``I;16``, and ``I`` holding values in [0, 65535]) is scaled by 255/65535 and
  rounded. Pillow's ``convert`` would clip every value above 255 to white (the published loader's
  behaviour on such files). 16-bit RGB files are read by Pillow as 8-bit RGB already.
- floating-point images (``F``) with values in [0, 1] are scaled by 255; other ranges are an error.
- The EXIF orientation tag is applied (the published loader ignores it, which shows a phone photo
  sideways); files without the tag are unaffected.
"""
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({
    ".bmp", ".gif", ".jfif", ".jpe", ".jpeg", ".jpg", ".pbm", ".pgm", ".png", ".pnm", ".ppm",
    ".tga", ".tif", ".tiff", ".webp",
})
VIDEO_EXTENSIONS = frozenset({
    ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".mts",
    ".ogv", ".ts", ".webm", ".wmv",
})
MAX_VIDEO_DECODE_ERRORS = 100  # give up on a video after this many undecodable packets


class InputError(Exception):
    """One input that cannot be read: ``path`` and what is wrong with it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Source:
    """One input file: ``path`` as the user named it, ``kind`` (``"image"`` or ``"video"``) and
    ``label``, a relative path unique within the run even without its extension (for files
    written per input)."""
    path: str
    kind: str
    label: str


@dataclass
class Frame:
    """One face image to predict: its RGB ``image`` (dropped once preprocessed unless it is to be
    drawn), the ``source`` it came from, for videos the frame number (in decoding order) and its
    time in seconds (from its timestamp), and ``warning`` (a note on a conversion, or None)."""
    source: Source
    image: Optional[Image.Image]
    index: Optional[int] = None
    time: Optional[float] = None
    warning: Optional[str] = None


def _kind(path: Path) -> Optional[str]:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def _sniff(path: Path) -> Optional[str]:
    """The kind of a file without a known extension, from its content."""
    try:
        with Image.open(path):
            return "image"
    except (OSError, ValueError, Image.DecompressionBombError):
        pass
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path)) as container:
            if container.streams.video and container.format.name != "image2":
                return "video"
    except (av.FFmpegError, OSError, ValueError, IndexError):
        pass
    return None


def collect_sources(paths: Sequence[str]) -> Tuple[List[Source], List[InputError]]:
    """The files named by ``paths``: image and video files as given (a file with another extension
    is recognised by its content), folders searched recursively for image and video files (by
    extension, hidden files skipped, in sorted order). Returns the sources and the problems
    (a missing path, an empty folder, a file that is neither an image nor a video)."""
    sources, problems, stems = [], [], set()

    def add(path: Path, kind: str, label: str):
        stem, ext = os.path.splitext(label)
        unique, count = stem, 1
        while unique in stems:
            unique, count = f"{stem}_{count}", count + 1
        stems.add(unique)
        sources.append(Source(str(path), kind, unique + ext))

    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and _kind(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                problems.append(InputError(name, "folder has no image or video files (by "
                                                 "extension: .jpg, .png, .mp4, ...)"))
            top = path.resolve().name or "root"
            for file in found:
                add(file, _kind(file), str(Path(top) / file.relative_to(path)))
        elif path.is_file():
            kind = _kind(path) or _sniff(path)
            if kind is None:
                problems.append(InputError(name, "not an image or video file (unknown format)"))
            else:
                add(path, kind, path.name)
        elif path.exists():
            problems.append(InputError(name, "not a regular file or folder"))
        else:
            problems.append(InputError(name, "no such file or folder"))
    return sources, problems


def _sixteen_bit_to_rgb(image: Image.Image, path: str) -> Image.Image:
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise InputError(path, f"{image.mode}-mode image with values in [{values.min()}, "
                               f"{values.max()}]; expected 16-bit values in [0, 65535]")
    gray = np.rint(values.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _float_to_rgb(image: Image.Image, path: str) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        raise InputError(path, f"floating-point image with values in [{np.nanmin(values):g}, "
                               f"{np.nanmax(values):g}]; expected values in [0, 1]")
    gray = np.rint(values * 255.0).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_rgb(image: Image.Image, path: str) -> Tuple[Image.Image, Optional[str]]:
    """``image`` as 8-bit RGB (see the module's notes) and a warning, or None."""
    if image.mode.startswith("I;16") or image.mode == "I":
        return _sixteen_bit_to_rgb(image, path), None
    if image.mode == "F":
        return _float_to_rgb(image, path), None
    warning = None
    if "A" in image.mode or "transparency" in image.info:
        with warnings.catch_warnings():  # Pillow's note on palette transparency
            warnings.simplefilter("ignore", UserWarning)
            alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            warning = "has transparent pixels; the alpha channel is ignored as the published " \
                      "loader does"
    return (image if image.mode == "RGB" else image.convert("RGB")), warning


def check_size(width: int, height: int, path: str, min_size: int) -> None:
    if min(width, height) < min_size:
        raise InputError(path, f"image is {width}x{height} px; a face crop needs at least "
                               f"{min_size} px on each side (--min-size)")


def read_image(source: Source, min_size: int) -> Frame:
    """Decode one image file completely into an RGB :class:`Frame`."""
    try:
        with Image.open(source.path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise InputError(source.path, f"image too large to decode safely ({error})") from None
    except Image.UnidentifiedImageError:
        raise InputError(source.path, "not an image Pillow can read (unknown or damaged "
                                      "format)") from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error) or type(error).__name__
        raise InputError(source.path, f"cannot decode image: {reason}") from None
    check_size(image.width, image.height, source.path, min_size)
    rgb, warning = to_rgb(image, source.path)
    return Frame(source, rgb, warning=warning)


def _reason(error: Exception) -> str:
    """FFmpeg's message without its errno and file name."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _frame_time(frame, index: int, rate: Optional[Fraction]) -> float:
    if frame.time is not None:
        return float(frame.time)
    return index / float(rate) if rate else float("nan")


def estimate_video_frames(source: Source, fps: Optional[float]) -> int:
    """About how many frames ``read_video`` will give (for the progress bar); 0 if unknown."""
    info = video_info(source.path)
    if info is None:
        return 0
    seconds = info["duration"] or 0.0
    total = info["frames"] or int(seconds * (info["fps"] or 0.0))
    return min(total, int(math.ceil(seconds * fps)) + 1) if fps else total


def video_info(path: str) -> Optional[dict]:
    """A video's nominal frame rate (``average_rate``, frames per second), frame count, duration
    in seconds and size as its container states them; None if it cannot be opened."""
    try:
        import av
        with av.open(path) as container:
            stream = container.streams.video[0]
            seconds = (float(stream.duration * stream.time_base) if stream.duration
                       else (container.duration or 0) / 1e6)
            rate = stream.average_rate
            return {"fps": float(rate) if rate else None, "frames": stream.frames or None,
                    "duration": seconds or None, "width": stream.width, "height": stream.height}
    except Exception:  # only a record: read_video reports the real problem
        return None


def read_video(source: Source, fps: Optional[float], min_size: int,
               problems: List[InputError]) -> Iterator[Frame]:
    """The frames of a video, every one or the first at or after each tick of ``1/fps`` seconds
    (counted from the first frame). Undecodable packets are skipped; if some were, one problem
    is appended to ``problems`` at the end; a video with no decodable frame raises."""
    try:
        import av
    except ImportError:
        raise InputError(source.path, "reading videos needs PyAV: pip install "
                                      "pyg_mefl[video]") from None
    try:
        container = av.open(source.path)
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:
        raise InputError(source.path, f"cannot open video: {_reason(error)}") from None
    with container:
        if not container.streams.video:
            raise InputError(source.path, "no video stream (no decodable video frames)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate, decoded, kept, failures, first_error = stream.average_rate, 0, 0, 0, None
        start = next_tick = None
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
                frames = packet.decode()
            except StopIteration:
                break
            except (av.FFmpegError, ValueError, IndexError) as error:
                failures += 1
                first_error = first_error or _reason(error)
                if failures >= MAX_VIDEO_DECODE_ERRORS:
                    break
                continue
            for frame in frames:
                index, decoded = decoded, decoded + 1
                time = _frame_time(frame, index, rate)
                if fps:
                    start = time if start is None else start
                    if next_tick is not None and time - start < next_tick - 1e-6:
                        continue
                    next_tick = (math.floor((time - start) * fps + 1e-6) + 1) / fps
                if kept == 0:
                    check_size(frame.width, frame.height, source.path, min_size)
                kept += 1
                yield Frame(source, frame.to_image(), index=index, time=time)
    if decoded == 0:
        detail = f" ({failures} packet(s) failed: {first_error})" if failures else ""
        raise InputError(source.path, f"no decodable video frames{detail}")
    if failures:
        problems.append(InputError(source.path, f"{failures} packet(s) could not be decoded "
                                                f"({first_error}); {decoded} frame(s) were read"))
