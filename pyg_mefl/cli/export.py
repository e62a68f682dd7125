"""``python -m pyg_mefl export CHECKPOINT --format onnx --out model.onnx``: a whole model as an
ONNX file of preprocessed face crops ``[B, 3, H, W]`` (any batch) to AU probabilities
``[B, num_aus]``, its AU names, thresholds, input size and normalisation in the file's metadata
(:func:`~pyg_mefl.models.onnx_export.export_onnx`). Exit status 0, or 2 with one error line
(bad arguments, checkpoint or output path; nothing is written then)."""
import argparse
import json
import os
from pathlib import Path

from .predict import UsageError, open_checkpoint, to_stderr

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a pyg_mefl model directory, a published whole-model file or "
                             "directory, or a Hugging Face hub id of one")
    parser.add_argument("--format", default="onnx", metavar="FORMAT",
                        help="the file format: onnx (default)")
    parser.add_argument("--out", default="model.onnx", metavar="FILE",
                        help="where to write the file (default: %(default)s)")


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as model.onnx")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"--out {out}: cannot write: its folder does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--out {out}: cannot write: permission denied in its folder")
    return path


def run(args: argparse.Namespace) -> int:
    """The ``export`` command; returns the exit status."""
    from ..models.onnx_export import export_onnx, onnx_metadata
    try:
        if args.format not in FORMATS:
            raise UsageError(f"--format {args.format}: expected one of {', '.join(FORMATS)}")
        out = _check_out(args.out)  # before the model is loaded
        model = open_checkpoint(args.checkpoint)
        try:
            export_onnx(model, out)
        except (ValueError, ModuleNotFoundError, OSError) as error:
            raise UsageError(f"{args.checkpoint}: {str(error).splitlines()[0]}") from None
    except UsageError as error:
        to_stderr(f"pyg_mefl export: error: {error}")
        return 2
    channels, height, width = json.loads(onnx_metadata(model)["input_size"])
    to_stderr(f"exported {args.checkpoint} to {out}: images [B, {channels}, {height}, {width}] "
              f"to probs [B, {len(model.au_names)}]")
    return 0
