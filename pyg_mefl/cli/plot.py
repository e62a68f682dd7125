"""``python -m pyg_mefl plot``: a predictions CSV (as ``predict`` writes it) to one PNG per input.

- A video: each face's AU probabilities over time as a heat map (AUs down, seconds across, one
  panel per ``face_id`` on a time axis common to the panels and covering every frame of the
  video), cells at or above the threshold outlined, white where the face is not in the frame.
  Frames may come at irregular times: each frame's cell spans from the midpoint with the frame
  before to the midpoint with the frame after. Videos of more than :data:`MAX_TIME_BINS` frames
  are averaged into that many bins of consecutive frames (over the frames the face is in).
- A photo: its faces side by side, each with its crop (when the photo can be opened) above its
  most probable AUs as bars, the threshold a vertical line.

The CSV is read once, row by row, into numpy arrays per input (4 bytes a probability, no Python
object per cell), and checked whole before anything is drawn: a file that is not a predictions
CSV is exit status 2 with one line on standard error naming the file and what is wrong (and the
line, for a bad row).
"""
import argparse
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..io.media import VIDEO_EXTENSIONS
from .predict import LANDMARK_COLUMNS, LEADING_COLUMNS

MAX_TIME_BINS = 2000  # longer videos are averaged into this many time bins before drawing
TOP_AUS = 10  # the AUs shown per face of a photo
MAX_PHOTO_COLUMNS = 6  # faces of a photo per row of panels
MIN_OUTLINED_PIXELS = 3  # narrower heat map columns are not outlined
FIGURE_WIDTH = 11  # inches, of a video's picture
MAX_PIXELS = 32000  # the longest side of a PNG; the dpi is lowered to keep under it
ABSENT_COLOUR = "white"  # a face's cells where it is not in the frame
OUTLINE_COLOUR = "#e8175d"  # the outline of cells at or above the threshold
Threshold = Union[float, np.ndarray]  # one for all AUs, or one per AU
FIRST_AU = len(LEADING_COLUMNS) + len(LANDMARK_COLUMNS)


class CSVProblem(Exception):
    """The file is not a predictions CSV (exit status 2): what is wrong, one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", metavar="PREDICTIONS.csv",
                        help="the CSV written by 'predict' ('-': standard input)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the pictures, one DIR/<input name>.png per input")
    parser.add_argument("--threshold", type=_probability, default=None, metavar="P",
                        help="probability at which every AU counts as present (default: the "
                             "thresholds of the CSV's sidecar <CSV>.json, the model's own per "
                             "AU, else 0.5)")
    parser.add_argument("--dpi", type=_positive_float, default=100.0, metavar="N",
                        help="pixels per inch of the PNGs (default: %(default)g)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Reading


class _Rows:
    """The rows of one input, in growing numpy arrays: frame, timestamp, face id (-1: no face),
    confidence and box (NaN: empty), the AU probabilities (float32) and the CSV line."""

    def __init__(self, num_aus: int, capacity: int = 16):
        self.n = 0
        self.frame = np.empty(capacity, np.int64)
        self.time = np.empty(capacity, np.float64)
        self.face = np.empty(capacity, np.int64)
        self.confidence = np.empty(capacity, np.float32)
        self.box = np.empty((capacity, 4), np.float32)
        self.probs = np.empty((capacity, num_aus), np.float32)
        self.line = np.empty(capacity, np.int64)

    _FIELDS = ("frame", "time", "face", "confidence", "box", "probs", "line")

    def _grow(self) -> None:
        for name in self._FIELDS:
            old = getattr(self, name)
            new = np.empty((2 * len(old),) + old.shape[1:], old.dtype)
            new[:self.n] = old[:self.n]
            setattr(self, name, new)

    def append(self, frame, time, face, confidence, box, probs, line) -> None:
        if self.n == len(self.frame):
            self._grow()
        n = self.n
        self.frame[n], self.time[n], self.face[n] = frame, time, face
        self.confidence[n], self.line[n] = confidence, line
        self.box[n] = box
        self.probs[n] = probs
        self.n = n + 1

    def trimmed(self) -> "_Rows":
        for name in self._FIELDS:
            setattr(self, name, getattr(self, name)[:self.n])
        return self


def check_header(header: Sequence[str]) -> List[str]:
    """The AU names of a predictions CSV's header; :class:`CSVProblem` if it is not one."""
    expected = LEADING_COLUMNS + LANDMARK_COLUMNS
    header = [name.strip() for name in header]
    for k, name in enumerate(expected):
        if k >= len(header):
            raise CSVProblem(f"line 1: not a predictions CSV header: {len(header)} column(s), "
                             f"expected {', '.join(expected)}, then one column per AU")
        if header[k] != name:
            raise CSVProblem(f"line 1: not a predictions CSV header: column {k + 1} is "
                             f"{header[k]!r}, expected {name!r}")
    au_names = header[len(expected):]
    if not au_names:
        raise CSVProblem("line 1: no AU columns after the landmark columns")
    seen = set()
    for name in au_names:
        if not name:
            raise CSVProblem("line 1: an AU column without a name")
        if name in seen:
            raise CSVProblem(f"line 1: AU column {name!r} appears twice")
        seen.add(name)
    return au_names


def _number(text: str, what: str, line: int, empty_ok: bool = False) -> float:
    if empty_ok and text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CSVProblem(f"line {line}: {what} is {text!r}, not a number")
    return value


def _integer(text: str, what: str, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise CSVProblem(f"line {line}: {what} is {text!r}, not a whole number") from None


def _probabilities(cells: Sequence[str], au_names: Sequence[str], line: int) -> np.ndarray:
    try:
        values = np.array(cells, dtype=np.float32)
    except ValueError:
        values = None
    if values is not None and np.all((values >= 0) & (values <= 1)):
        return values
    for name, text in zip(au_names, cells):  # find the bad cell to name it
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 <= value <= 1:
            raise CSVProblem(f"line {line}: {name} is {text!r}, not a probability in [0, 1]")
    raise CSVProblem(f"line {line}: a probability out of [0, 1]")  # not reached


def _counted_lines(stream: TextIO, bar) -> Iterator[str]:
    """The lines of ``stream``, counting their characters on ``bar`` every megabyte or so."""
    done = 0
    for line in stream:
        done += len(line)
        if done >= 1 << 20:
            bar.update(done)
            done = 0
        yield line
    bar.update(done)


def read_predictions(stream: TextIO, bar=None) -> Tuple[List[str], Dict[str, _Rows]]:
    """The AU names and each input's rows (in the order the inputs first appear) of a
    predictions CSV, checked; :class:`CSVProblem` names the first thing wrong."""
    lines = _counted_lines(stream, bar) if bar is not None else stream
    reader = csv.reader(lines)
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise CSVProblem("empty file, not a predictions CSV") from None
        au_names = check_header(header)
        width = FIRST_AU + len(au_names)
        inputs: Dict[str, _Rows] = {}
        empty_box = np.full(4, np.nan, np.float32)
        empty_probs = np.full(len(au_names), np.nan, np.float32)
        for cells in reader:
            line = reader.line_num
            if not cells:
                continue  # a blank line
            if len(cells) != width:
                raise CSVProblem(f"line {line}: {len(cells)} cell(s), the header has {width}")
            name = cells[0]
            if not name:
                raise CSVProblem(f"line {line}: the input cell is empty")
            frame = _integer(cells[1], "frame", line)
            if frame < 0:
                raise CSVProblem(f"line {line}: frame is {cells[1]!r}, expected 0 or more")
            time = _number(cells[2], "timestamp", line)
            success = cells[5].strip()
            if success not in ("0", "1"):
                raise CSVProblem(f"line {line}: success is {cells[5]!r}, expected 0 or 1")
            rows = inputs.get(name)
            if rows is None:
                rows = inputs[name] = _Rows(len(au_names))
            if success == "0":
                rows.append(frame, time, -1, math.nan, empty_box, empty_probs, line)
                continue
            face = _integer(cells[3], "face_id", line)
            if face < 0:
                raise CSVProblem(f"line {line}: face_id is {cells[3]!r}, expected 0 or more")
            confidence = _number(cells[4], "confidence", line, empty_ok=True)
            box = [_number(cells[6 + k], LEADING_COLUMNS[6 + k], line, empty_ok=True)
                   for k in range(4)]
            rows.append(frame, time, face, confidence, box,
                        _probabilities(cells[FIRST_AU:], au_names, line), line)
    except csv.Error as error:
        raise CSVProblem(f"line {reader.line_num}: {error}") from None
    except UnicodeDecodeError:
        raise CSVProblem(f"not text (UTF-8), not a predictions CSV (line {reader.line_num + 1})"
                         ) from None
    if not inputs:
        raise CSVProblem("no rows after the header")
    for rows in inputs.values():
        _check_repeats(rows.trimmed())
    return au_names, inputs


def _check_repeats(rows: _Rows) -> None:
    """Each face once per frame, each frame at one timestamp."""
    faces = rows.face >= 0
    keys = np.stack([rows.frame[faces], rows.face[faces]], axis=1)
    if len(keys):
        order = np.lexsort((rows.line[faces], keys[:, 1], keys[:, 0]))
        same = np.all(keys[order][1:] == keys[order][:-1], axis=1)
        if same.any():
            k = order[1:][same][0]
            raise CSVProblem(f"line {rows.line[faces][k]}: face {keys[k, 1]} of frame "
                             f"{keys[k, 0]} appears a second time")
    order = np.lexsort((rows.line, rows.frame))
    moved = (rows.frame[order][1:] == rows.frame[order][:-1]) & \
            (rows.time[order][1:] != rows.time[order][:-1])
    if moved.any():
        k = order[1:][moved][0]
        raise CSVProblem(f"line {rows.line[k]}: frame {rows.frame[k]} has another timestamp "
                         f"than on the line before it")


# ----------------------------------------------------------------------------------------------
# What is drawn


@dataclass
class VideoPlot:
    """A video's heat maps: ``probs[k]`` (float32 ``[bins, AUs]``, NaN where the face is absent)
    of face ``face_ids[k]`` over the time bins between ``edges`` (seconds, ``bins + 1``)."""
    name: str
    au_names: List[str]
    face_ids: np.ndarray
    edges: np.ndarray
    probs: np.ndarray
    frames: int
    frames_per_bin: float
    present: np.ndarray  # frames each face is in
    first: float  # the first and last frame's timestamps
    last: float


@dataclass
class PhotoFace:
    face_id: int
    confidence: float  # NaN: none (whole images)
    box: np.ndarray  # x1, y1, x2, y2; NaN: none
    probs: np.ndarray


@dataclass
class PhotoPlot:
    name: str
    au_names: List[str]
    faces: List[PhotoFace]


def is_video(name: str, rows: _Rows, videos: Sequence[str] = ()) -> bool:
    """An input with more than one frame, a video file's extension, or in the sidecar's
    videos."""
    return (name in videos or Path(name).suffix.lower() in VIDEO_EXTENSIONS
            or (rows.n > 0 and np.any(rows.frame != rows.frame[0])))


def time_edges(times: np.ndarray, single: float = 0.5) -> np.ndarray:
    """The cell edges of frames shown at ``times`` (sorted): midpoints between consecutive
    frames, half a step beyond the first and last (``single`` seconds each side of a lone
    frame)."""
    if len(times) == 1:
        return np.array([times[0] - single, times[0] + single])
    middle = (times[1:] + times[:-1]) / 2
    return np.concatenate([[2 * times[0] - middle[0]], middle, [2 * times[-1] - middle[-1]]])


def video_plot(name: str, au_names: List[str], rows: _Rows, fps: Optional[float] = None,
               max_bins: int = MAX_TIME_BINS) -> VideoPlot:
    """The heat maps of one video's rows: every frame on the time axis (in time order), frames
    averaged in groups of consecutive ones into at most ``max_bins`` bins."""
    frames, first, inverse = np.unique(rows.frame, return_index=True, return_inverse=True)
    times = rows.time[first]
    order = np.argsort(times, kind="stable")
    position = np.empty(len(frames), np.int64)
    position[order] = np.arange(len(frames))
    edges = time_edges(times[order], 0.5 / fps if fps else 0.5)
    count = len(frames)
    if count > max_bins:
        bounds = np.unique(np.linspace(0, count, max_bins + 1).round().astype(np.int64))
        bin_of = np.searchsorted(bounds, np.arange(count), side="right") - 1
        edges = edges[bounds]
    else:
        bin_of = np.arange(count)
    bins = len(edges) - 1
    row_bin = bin_of[position[inverse.reshape(-1)]]
    face_ids = np.unique(rows.face[rows.face >= 0])
    probs = np.full((len(face_ids), bins, len(au_names)), np.nan, np.float32)
    present = np.zeros(len(face_ids), np.int64)
    for k, face in enumerate(face_ids):
        mine = rows.face == face
        present[k] = mine.sum()
        if bins == count:
            probs[k, row_bin[mine]] = rows.probs[mine]
        else:
            sums = np.zeros((bins, len(au_names)), np.float64)
            np.add.at(sums, row_bin[mine], rows.probs[mine])
            seen = np.bincount(row_bin[mine], minlength=bins)
            with np.errstate(invalid="ignore", divide="ignore"):
                probs[k] = sums / seen[:, None]
    return VideoPlot(name, list(au_names), face_ids, edges, probs, count, count / bins, present,
                     float(times[order[0]]), float(times[order[-1]]))


def photo_plot(name: str, au_names: List[str], rows: _Rows) -> PhotoPlot:
    faces = rows.face >= 0
    order = np.argsort(rows.face[faces], kind="stable")
    index = np.flatnonzero(faces)[order]
    return PhotoPlot(name, list(au_names), [
        PhotoFace(int(rows.face[i]), float(rows.confidence[i]), rows.box[i].copy(),
                  rows.probs[i].copy()) for i in index])


# ----------------------------------------------------------------------------------------------
# Drawing

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _outline(ax, edges: np.ndarray, above: np.ndarray) -> None:
    """Outline the regions of ``above`` (bool ``[AUs, bins]``, cells between ``edges`` across
    and at whole numbers down) along the cells' borders: a contour of the mask sampled just
    either side of every border, so it crosses each one at the border itself."""
    if not above.any():
        return
    rows, bins = above.shape
    widths = np.diff(edges)
    gaps = np.minimum(np.concatenate([[widths[0]], widths]),
                      np.concatenate([widths, [widths[-1]]]))
    little = np.maximum(gaps, 0) * 1e-3
    x = np.stack([edges - little, edges + little], axis=1).reshape(-1)
    y = np.repeat(np.arange(rows + 1) - 0.5, 2) + np.tile([-1e-3, 1e-3], rows + 1)
    padded = np.zeros((rows + 2, bins + 2), np.float32)
    padded[1:-1, 1:-1] = above
    # sample 2j is just before edge j (cell j - 1), 2j + 1 just after it (cell j)
    columns = np.arange(2 * (bins + 1)) // 2 + np.arange(2 * (bins + 1)) % 2
    lines = np.arange(2 * (rows + 1)) // 2 + np.arange(2 * (rows + 1)) % 2
    ax.contour(x, y, padded[np.ix_(lines, columns)], levels=[0.5], colors=OUTLINE_COLOUR,
               linewidths=0.8)


def video_figure(plot: VideoPlot, threshold: Threshold, dpi: float = 100.0):
    """One panel per face, stacked on a common time axis, and the colour bar; cells at or above
    ``threshold`` (one for all AUs, or one per AU of ``plot.au_names``) outlined when the columns
    are at least :data:`MIN_OUTLINED_PIXELS` wide at ``dpi`` (narrower ones would be all
    outline), one threshold for all marked on the colour bar."""
    import matplotlib
    au_count, faces = len(plot.au_names), len(plot.face_ids)
    row_height = 0.16  # inches per AU: room for labels of 6.5 pt
    panel = max(1.3, row_height * au_count + 0.7)
    title = Path(plot.name).name
    if faces == 0:
        figure = _figure(FIGURE_WIDTH, 1.6)
        figure.suptitle(f"{title}: AU probabilities over time", fontsize=12)
        figure.text(0.5, 0.4, f"no face found in any of its {plot.frames} frame(s) "
                              f"({plot.first:.2f} to {plot.last:.2f} s)",
                    ha="center", va="center", fontsize=11)
        return figure
    figure = _figure(FIGURE_WIDTH, panel * faces + 0.8)
    span = plot.edges[-1] - plot.edges[0]
    column = np.median(np.diff(plot.edges)) / span * (FIGURE_WIDTH - 1.9) * dpi if span else 0
    outlined = column >= MIN_OUTLINED_PIXELS
    axes = figure.subplots(faces, 1, sharex=True, squeeze=False)[:, 0]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=ABSENT_COLOUR)
    per_au, common = _per_au(threshold, au_count)
    y_edges = np.arange(au_count + 1) - 0.5
    mesh = None
    for k, ax in enumerate(axes):
        grid = plot.probs[k].T  # [AUs, bins]
        ax.set_facecolor(ABSENT_COLOUR)
        mesh = ax.pcolormesh(plot.edges, y_edges, np.ma.masked_invalid(grid), cmap=cmap,
                             vmin=0, vmax=1, shading="flat", rasterized=True)
        if outlined:
            _outline(ax, plot.edges, np.nan_to_num(grid, nan=-1) >= per_au[:, None])
        ax.set_yticks(np.arange(au_count), plot.au_names, fontsize=6.5)
        ax.set_ylim(au_count - 0.5, -0.5)
        ax.set_xlim(plot.edges[0], plot.edges[-1])
        ax.set_ylabel("AU", fontsize=9)
        ax.tick_params(axis="x", labelsize=8, labelbottom=True)
        share = plot.present[k] / plot.frames
        ax.set_title(f"face {int(plot.face_ids[k])}  (in {plot.present[k]} of {plot.frames} "
                     f"frames, {share:.0%})", fontsize=10, loc="left")
        ax.set_label(f"face {int(plot.face_ids[k])}")
    axes[-1].set_xlabel("time (s)", fontsize=9)
    bar = figure.colorbar(mesh, ax=list(axes), fraction=0.03, pad=0.01,
                          aspect=max(20, 12 * faces))
    bar.set_label("probability", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    if common is not None:
        bar.ax.axhline(common, color=OUTLINE_COLOUR, linewidth=2)
        bar.ax.text(-0.15, common, f"threshold {common:g}", ha="right", va="center",
                    transform=bar.ax.get_yaxis_transform(), fontsize=7, color=OUTLINE_COLOUR,
                    rotation=90)
        rule = (f"outlined: probability \u2265 {common:g}" if outlined else
                f"threshold {common:g}: the line on the colour bar")
    else:
        rule = ("outlined: probability \u2265 the AU's own threshold" if outlined else
                "the AUs have thresholds of their own (not drawn at this width)")
    binned = (f", averaged over {plot.frames_per_bin:.1f} frames a column"
              if plot.frames_per_bin > 1 else "")
    figure.suptitle(f"{title}: AU probabilities over time, {faces} face(s), {plot.frames} "
                    f"frames{binned}\n{rule}; white: the face is not in the frame", fontsize=11)
    return figure


def _open_photo(name: str, base: Optional[Path]):
    """The photo ``name`` (or, relative, beside the CSV) as RGB, EXIF orientation applied as
    ``predict`` applies it; None if it cannot be opened."""
    from PIL import Image, ImageOps
    candidates = [Path(name)]
    if base is not None and not Path(name).is_absolute():
        candidates.append(base / name)
    for path in candidates:
        if path.is_file():
            try:
                with Image.open(path) as image:
                    image.load()
                    return ImageOps.exif_transpose(image).convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError):
                return None
    return None


def _crop(image, box: np.ndarray):
    if image is None or not np.all(np.isfinite(box)):
        return None
    x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x2, y2 = min(image.width, math.ceil(box[2])), min(image.height, math.ceil(box[3]))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return np.asarray(image.crop((x1, y1, x2, y2)))


def photo_figure(plot: PhotoPlot, threshold: Threshold, base: Optional[Path] = None):
    """The faces side by side (at most :data:`MAX_PHOTO_COLUMNS` a row): each face's crop
    when the photo opens, above its :data:`TOP_AUS` most probable AUs, coloured by whether they
    reach ``threshold`` (one for all AUs, or one per AU of ``plot.au_names``)."""
    title = Path(plot.name).name
    if not plot.faces:
        figure = _figure(6, 1.6)
        figure.suptitle(title, fontsize=12)
        figure.text(0.5, 0.4, "no face found", ha="center", va="center", fontsize=14)
        return figure
    image = _open_photo(plot.name, base)
    crops = [_crop(image, face.box) for face in plot.faces]
    with_crops = any(crop is not None for crop in crops)
    top = min(TOP_AUS, len(plot.au_names))
    columns = min(len(plot.faces), MAX_PHOTO_COLUMNS)
    lines = math.ceil(len(plot.faces) / columns)
    bars_height = 0.25 * top + 0.9
    crop_height = 2.4 if with_crops else 0
    figure = _figure(max(3.1 * columns, 5), lines * (bars_height + crop_height) + 0.7)
    per_au, common = _per_au(threshold, len(plot.au_names))
    rule = (f"{common:g} (the dashed line)" if common is not None else
            "the AU's own threshold (its dashed mark)")
    figure.suptitle(f"{title}: {len(plot.faces)} face(s), the {top} most probable AUs of each"
                    f"\norange: probability \u2265 {rule}, grey: below", fontsize=12)
    cells = figure.subfigures(lines, columns, squeeze=False)
    names = np.array(plot.au_names)
    for k, face in enumerate(plot.faces):
        cell = cells[k // columns, k % columns]
        if with_crops:
            crop_ax, ax = cell.subplots(2, 1, height_ratios=[crop_height, bars_height])
            crop_ax.set_axis_off()
            if crops[k] is not None:
                crop_ax.imshow(crops[k])
            crop_ax.set_label(f"face {face.face_id} crop")
        else:
            ax = cell.subplots()
        best = np.argsort(-face.probs, kind="stable")[:top]
        values = face.probs[best]
        colours = np.where(values >= per_au[best], "tab:orange", "tab:gray")
        ax.barh(np.arange(top), values, color=colours)
        if common is not None:
            ax.axvline(common, color=OUTLINE_COLOUR, linewidth=1.2, linestyle="--")
        else:
            ax.vlines(per_au[best], np.arange(top) - 0.45, np.arange(top) + 0.45,
                      color=OUTLINE_COLOUR, linewidth=1.2, linestyle="--")
        for y, value in enumerate(values):
            ax.text(min(value, 1) + 0.02, y, f"{value:.2f}", va="center", fontsize=7)
        ax.set_yticks(np.arange(top), names[best], fontsize=8)
        ax.set_ylim(top - 0.5, -0.5)
        ax.set_xlim(0, 1.15)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("probability", fontsize=8)
        confidence = ("" if math.isnan(face.confidence)
                      else f", confidence {face.confidence:.3f}")
        ax.set_title(f"face {face.face_id}{confidence}", fontsize=9)
        ax.set_label(f"face {face.face_id}")
    return figure


def save(figure, path: Path, dpi: float) -> float:
    """Write ``figure`` as a PNG at ``dpi``, lowered so that no side is over
    :data:`MAX_PIXELS`; returns the dpi used."""
    longest = max(figure.get_size_inches())
    dpi = min(dpi, MAX_PIXELS / longest)
    figure.savefig(path, dpi=dpi, format="png")
    return dpi


# ----------------------------------------------------------------------------------------------
# The command


def png_names(inputs: Sequence[str]) -> Dict[str, str]:
    """``<stem>.png`` per input, ``<stem>_1.png``, ``<stem>_2.png``, ... for repeated stems."""
    names, used = {}, set()
    for name in inputs:
        stem = Path(name).stem or "input"
        candidate, k = stem, 0
        while candidate.lower() in used:
            k += 1
            candidate = f"{stem}_{k}"
        used.add(candidate.lower())
        names[name] = candidate + ".png"
    return names


def read_sidecar(path: str) -> Tuple[dict, Optional[str]]:
    """The sidecar ``<csv>.json`` (``{}`` if there is none) and a warning if it is broken."""
    sidecar = Path(path + ".json")
    if path == "-" or not sidecar.is_file():
        return {}, None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as error:
        return {}, f"{sidecar}: not read ({type(error).__name__}), its settings are not used"
    return (record if isinstance(record, dict) else {}), None


def _is_probability(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _sidecar_threshold(record: dict, au_names: Sequence[str]) -> Optional[Threshold]:
    """The sidecar's decision thresholds: its ``thresholds`` per AU (``predict`` writes the
    model's) where they cover every AU of the CSV, as an array in ``au_names`` order, else its
    one ``threshold``; :obj:`None` where it has neither."""
    per_au = record.get("thresholds")
    if isinstance(per_au, dict) and all(_is_probability(per_au.get(n)) for n in au_names):
        values = np.array([float(per_au[n]) for n in au_names])
        return float(values[0]) if len(set(values.tolist())) == 1 else values
    value = record.get("threshold")
    return float(value) if _is_probability(value) else None


def _per_au(threshold: Threshold, count: int) -> Tuple[np.ndarray, Optional[float]]:
    """``threshold`` as one value per AU, and as the one value for all (:obj:`None` if the AUs'
    differ)."""
    if isinstance(threshold, np.ndarray):
        if threshold.shape != (count,):
            raise ValueError(f"threshold: expected {count} values, one per AU, got "
                             f"{threshold.shape}")
        return threshold, None
    return np.full(count, float(threshold)), float(threshold)


def _sidecar_fps(record: dict, name: str) -> Optional[float]:
    videos = record.get("videos")
    info = videos.get(name) if isinstance(videos, dict) else None
    fps = info.get("fps") if isinstance(info, dict) else None
    if isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps < math.inf:
        return float(fps)
    return None


def _read(path: str, progress: bool) -> Tuple[List[str], Dict[str, _Rows]]:
    if path == "-":
        return read_predictions(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig",
                                                 newline=""))
    try:
        stream = open(path, newline="", encoding="utf-8-sig")  # a BOM, if any, is not a name
    except FileNotFoundError:
        raise CSVProblem("no such file") from None
    except IsADirectoryError:
        raise CSVProblem("a folder, not a predictions CSV") from None
    except OSError as error:
        raise CSVProblem(f"cannot read: {error.strerror or error}") from None
    with stream:
        try:
            size = os.fstat(stream.fileno()).st_size
        except OSError:
            size = None
        with tqdm(total=size, unit="B", unit_scale=True, desc="reading", disable=not progress,
                  dynamic_ncols=True, file=sys.stderr, leave=False) as bar:
            return read_predictions(stream, bar)


def run(args: argparse.Namespace) -> int:
    """The ``plot`` command; returns the exit status."""
    progress = not args.quiet and sys.stderr.isatty()
    try:
        au_names, inputs = _read(args.csv, progress)
    except CSVProblem as problem:
        print(f"pyg_mefl plot: error: {args.csv}: {problem}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("pyg_mefl plot: interrupted", file=sys.stderr)
        return 130
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"pyg_mefl plot: error: --out {args.out}: cannot create the folder: "
              f"{error.strerror or error}", file=sys.stderr, flush=True)
        return 2
    record, warning = read_sidecar(args.csv)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    threshold = args.threshold
    if threshold is None:
        threshold = _sidecar_threshold(record, au_names)
    if threshold is None:
        threshold = 0.5
    videos = record.get("videos") if isinstance(record.get("videos"), dict) else {}
    base = Path(args.csv).resolve().parent if args.csv != "-" else None
    names = png_names(list(inputs))
    written = 0
    try:
        for name in tqdm(list(inputs), unit="input", desc="drawing", disable=not progress,
                         dynamic_ncols=True, file=sys.stderr):
            rows = inputs.pop(name)  # its arrays go once drawn
            if is_video(name, rows, videos):
                figure = video_figure(video_plot(name, au_names, rows,
                                                 _sidecar_fps(record, name)), threshold, args.dpi)
            else:
                figure = photo_figure(photo_plot(name, au_names, rows), threshold, base)
            del rows
            try:
                save(figure, out / names[name], args.dpi)
            except OSError as error:
                print(f"pyg_mefl plot: error: {out / names[name]}: cannot write: "
                      f"{error.strerror or error}", file=sys.stderr, flush=True)
                return 2
            written += 1
    except KeyboardInterrupt:
        print(f"pyg_mefl plot: interrupted; {written} picture(s) written", file=sys.stderr)
        return 130
    if not args.quiet:
        print(f"drew {written} picture(s) into {out}", file=sys.stderr, flush=True)
    return 0
