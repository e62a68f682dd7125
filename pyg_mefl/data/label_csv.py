r"""Labelled face photos listed in a CSV file, read and checked in full before anything trains.

The file's header names a ``path`` column (each photo, relative to the CSV's folder or
absolute), one column per AU and optionally a ``split`` column (``train``, ``val`` or ``test``;
without it a seeded 70/10/20 split). An AU column is named as the model names the AU
(``AU12``, ``AUL1``) or as OpenFace and py-feat write it: ``AU01`` (leading zeros) and
``AU12_c`` (OpenFace's presence column) both mean ``AU12``. Intensity columns (``AU12_r``) are
not labels: they are skipped with a warning, as are other columns (``frame``, ``face_id``, ...).
Each label is ``1`` (present), ``0`` (absent) or ``-1`` / empty (unknown); ``1.0``, ``0.0`` and
``-1.0`` are read as those.
"""
import csv
import os
import re
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .datasets import SPLITS, random_split

PATH_COLUMN, SPLIT_COLUMN = "path", "split"
_AU_COLUMN = re.compile(r"^AU([LR]?)0*(\d+)(_[cr])?$", re.IGNORECASE)
_LABELS = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": -1}


def au_column_name(column: str) -> Tuple[Optional[str], bool]:
    """The AU a CSV column labels, as pyg_mefl names it, and whether the column holds
    intensities: ``"AU01"`` and ``"AU12_c"`` give ``("AU1", False)``, ``("AU12", False)``;
    ``"AU12_r"`` gives ``("AU12", True)``; a column that names no AU gives ``(None, False)``."""
    match = _AU_COLUMN.match(column.strip())
    if match is None:
        return None, False
    side, number, suffix = match.groups()
    return f"AU{side.upper()}{int(number)}", (suffix or "").lower() == "_r"


@dataclass
class LabelTable:
    """What :func:`read_label_csv` read: one row per photo.

    Attributes:
        source (str): The CSV file.
        paths (list of str): Each photo's absolute path.
        labels (torch.Tensor): ``[M, A]`` long, ``1``, ``0``, ``-1`` (unknown), in the order of
            :attr:`au_names`; ``-1`` throughout for the AUs the file has no column for.
        split (torch.Tensor): ``[M]`` ``0`` train, ``1`` val, ``2`` test.
        au_names (list of str): The model's AU names.
        columns (dict): Each labelled AU name to the CSV column it came from.
        lines (list of int): Each photo's line in the CSV file (the header is line 1).
    """
    source: str
    paths: List[str]
    labels: Tensor
    split: Tensor
    au_names: List[str]
    columns: Dict[str, str]
    lines: List[int]


def read_label_csv(path, au_names: Sequence[str], seed: int = 0,
                   check_images: bool = True) -> LabelTable:
    r"""Read and check a labels CSV (see the module's notes) for a model with ``au_names``.

    Every row is checked before the table is returned: nothing trains on a file that is wrong
    in any line.

    Args:
        path (str or os.PathLike): The CSV file.
        au_names (sequence of str): The model's AU names (:attr:`FaceAUModel.au_names`).
        seed (int): Seed of the split when the file has no ``split`` column. (default: :obj:`0`)
        check_images (bool): Open every photo with Pillow to check that it reads.
            (default: :obj:`True`)

    Raises:
        FileNotFoundError: the CSV file, or a photo it names (with the line), does not exist.
        KeyError: AU columns name AUs the model does not have (all of them named).
        ValueError: no ``path`` column, two columns for one AU, a row of the wrong length, a
            label outside ``{1, 0, -1, empty}``, an unknown split, an unreadable photo (each
            naming the file, line and column), or a split without any photo.

    Warns:
        UserWarning: skipped columns; an AU without a positive label in a split (named with its
        column and the split).
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: labels file not found")
    au_names = list(au_names)
    with open(source, newline="", encoding="utf-8-sig") as stream:
        rows = list(csv.reader(stream))
    if not rows:
        raise ValueError(f"{source}: empty file; expected a header with a '{PATH_COLUMN}' column "
                         f"and AU columns")
    header = [name.strip() for name in rows[0]]
    if PATH_COLUMN not in header:
        raise ValueError(f"{source}, line 1: no '{PATH_COLUMN}' column in the header {header}")
    au_columns = _au_columns(header, au_names, source)
    split_index = header.index(SPLIT_COLUMN) if SPLIT_COLUMN in header else None
    path_index = header.index(PATH_COLUMN)
    folder = os.path.dirname(os.path.abspath(source))
    paths, labels, splits, lines = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(field.strip() for field in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{source}, line {line}: {len(row)} fields, the header has "
                             f"{len(header)}")
        photo = row[path_index].strip()
        if not photo:
            raise ValueError(f"{source}, line {line}, column '{PATH_COLUMN}': empty path")
        photo = os.path.normpath(os.path.join(folder, photo))
        if not os.path.isfile(photo):
            raise FileNotFoundError(f"{source}, line {line}, column '{PATH_COLUMN}': photo "
                                    f"{photo} not found")
        if check_images:
            _check_image(photo, f"{source}, line {line}, column '{PATH_COLUMN}'")
        label_row = [-1] * len(au_names)
        for name, index in au_columns.items():
            value = row[index].strip()
            if value not in _LABELS:
                raise ValueError(f"{source}, line {line}, column '{header[index]}': label "
                                 f"{value!r}; expected 1, 0, -1 or empty (unknown)")
            label_row[au_names.index(name)] = _LABELS[value]
        if split_index is not None:
            split = row[split_index].strip().lower()
            if split not in SPLITS:
                raise ValueError(f"{source}, line {line}, column '{SPLIT_COLUMN}': "
                                 f"{row[split_index]!r}; expected one of {list(SPLITS)}")
            splits.append(SPLITS.index(split))
        paths.append(photo)
        labels.append(label_row)
        lines.append(line)
    if not paths:
        raise ValueError(f"{source}: no photo rows after the header")
    split = torch.tensor(splits) if split_index is not None else random_split(len(paths), seed)
    table = LabelTable(source, paths, torch.tensor(labels, dtype=torch.long), split, au_names,
                       {name: header[index] for name, index in au_columns.items()}, lines)
    check_label_splits(table)
    return table


def check_label_splits(table: LabelTable) -> None:
    """Every split holds a photo (else a :class:`ValueError`); warns for each labelled AU
    without a positive label in a split, naming the file, the column and the split."""
    for code, name in enumerate(SPLITS):
        mine = table.split == code
        if not bool(mine.any()):
            raise ValueError(f"{table.source}: no photo in the '{name}' split (the run needs "
                             f"train, val and test photos)")
        for au, column in table.columns.items():
            if not bool((table.labels[mine, table.au_names.index(au)] == 1).any()):
                warnings.warn(f"{table.source}, column '{column}': no positive label in the "
                              f"'{name}' split ({int(mine.sum())} photos); "
                              + _WITHOUT_POSITIVES[name], stacklevel=3)


_WITHOUT_POSITIVES = {
    "train": "the model cannot learn it from this data",
    "val": "its threshold is not calibrated (0.5) and its validation F1 is 0 whatever the "
           "model does",
    "test": "its test F1 is 0 or undefined",
}


def _au_columns(header: List[str], au_names: List[str], source: str) -> Dict[str, int]:
    """Each labelled AU name to its column's index; warns for the columns it skips."""
    columns: Dict[str, int] = {}
    unknown, skipped = [], []
    for index, column in enumerate(header):
        if column in (PATH_COLUMN, SPLIT_COLUMN):
            continue
        name, intensity = au_column_name(column)
        if name is None or intensity:
            skipped.append(column)
        elif name not in au_names:
            unknown.append(column)
        elif name in columns:
            raise ValueError(f"{source}, line 1: columns '{header[columns[name]]}' and "
                             f"'{column}' both label {name}")
        else:
            columns[name] = index
    if unknown:
        raise KeyError(f"{source}, line 1: AU column(s) {unknown} name AUs the model does not "
                       f"have; its AUs are {au_names}")
    if skipped:
        warnings.warn(f"{source}: skipped column(s) {skipped} (not a path, split or AU presence "
                      f"column; intensities such as AU12_r are not labels)", stacklevel=3)
    if not columns:
        raise ValueError(f"{source}, line 1: no AU column in the header {header}")
    return columns


def _check_image(path: str, where: str) -> None:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{where}: cannot read photo {path}: {error}") from None
