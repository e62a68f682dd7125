"""The published checkpoint layouts as rename tables, and strict reading, loading and saving
of published weights."""
from .anfl import ANFL_LAYOUTS, anfl_head_to_published, detect_stage, load_anfl_head
from .files import CheckpointParts, read_checkpoint, split_checkpoint
from .layouts import LAYOUTS, SOURCES, HeadConfig
from .rename import to_native, to_published

__all__ = ["ANFL_LAYOUTS", "CheckpointParts", "HeadConfig", "LAYOUTS", "SOURCES",
           "anfl_head_to_published", "detect_stage", "load_anfl_head", "read_checkpoint",
           "split_checkpoint", "to_native", "to_published"]
