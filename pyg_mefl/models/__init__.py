"""Image backbones and whole models (backbone, then an AU head on face graphs or images)."""
from .backbones import (BACKBONES, ImageTokens, ResNet50Tokens, ResNetTokens, SmallCNN,
                        SwinTokens, build_backbone)
from .face_au_model import FaceAUModel
from .preprocessing import published_preprocessing, published_transform

__all__ = ["BACKBONES", "FaceAUModel", "ImageTokens", "ResNet50Tokens", "ResNetTokens",
           "SmallCNN", "SwinTokens", "build_backbone", "published_preprocessing",
           "published_transform"]
