"""The published checkpoint layouts as rename tables, and strict reading, loading and saving
of published weights."""
from .anfl import ANFL_LAYOUTS, anfl_head_to_published, detect_stage, load_anfl_head
from .backbone_layouts import BACKBONE_NAMES, detect_backbone
from .files import CheckpointParts, read_checkpoint, read_hub_directory, split_checkpoint
from .layouts import LAYOUTS, SOURCES, HeadConfig
from .rename import to_native, to_published
from .swin import SWIN_SIZES, swin_rules, swin_to_native, swin_to_published

__all__ = ["ANFL_LAYOUTS", "BACKBONE_NAMES", "CheckpointParts", "HeadConfig", "LAYOUTS",
           "SOURCES", "SWIN_SIZES", "anfl_head_to_published", "detect_backbone", "detect_stage",
           "load_anfl_head", "read_checkpoint", "read_hub_directory", "split_checkpoint",
           "swin_rules", "swin_to_native", "swin_to_published", "to_native", "to_published"]
