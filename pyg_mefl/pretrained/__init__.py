"""The published checkpoint layouts as rename tables, and strict reading, loading and saving
of published weights."""
from .files import CheckpointParts, read_checkpoint, split_checkpoint
from .layouts import LAYOUTS, SOURCES, HeadConfig
from .rename import to_native, to_published

__all__ = ["CheckpointParts", "HeadConfig", "LAYOUTS", "SOURCES", "read_checkpoint",
           "split_checkpoint", "to_native", "to_published"]
