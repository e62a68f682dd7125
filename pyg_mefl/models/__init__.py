"""Image backbones and whole models (backbone, then an AU head on face graphs)."""
from .backbones import BACKBONES, ResNet50Tokens, SmallCNN, build_backbone
from .face_au_model import FaceAUModel

__all__ = ["BACKBONES", "FaceAUModel", "ResNet50Tokens", "SmallCNN", "build_backbone"]
