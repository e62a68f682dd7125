"""``python -m pyg_mefl <command>``: the parser and the dispatch to each command."""
import argparse
import sys
from typing import Optional, Sequence

from . import export, plot, predict

COMMANDS = {
    "predict": (predict, "photos and videos of people to AU probabilities, a CSV row per "
                         "frame and face"),
    "plot": (plot, "predictions CSV to pictures: AUs over time per face, faces of a photo"),
    "export": (export, "a model to an ONNX file: face crops to AU probabilities, any batch"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyg_mefl",
        description="MEFL facial action unit models from the command line.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text,
                                  description=help_text)
        module.add_arguments(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return COMMANDS[args.command][0].run(args)
