"""The command line (``python -m pyg_mefl``): the top layer, importing the package, imported by
nothing in it."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
