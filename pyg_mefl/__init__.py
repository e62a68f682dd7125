"""pyg_mefl: MEFL (multi-dimensional edge feature learning) for facial action units as
PyTorch Geometric layers."""
from .attention import CrossAttention
from .aus import BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS
from .backbones import ResNet50Tokens, SmallCNN, build_backbone
from .blocks import AUFeatureBlocks, LinearBlock
from .datasets import (FaceGraphDataset, ImageListFaceDataset, SyntheticFaceDataset,
                       TokenFaceDataset, vocabulary_ids)
from .gem import GraphEdgeModel
from .gnn import GatedGNN, GatedGNNLayer
from .graph import complete_au_graph, edge_slots, face_graph, relation_labels
from .losses import MEFLLoss, WeightedAsymmetricLoss, au_class_weights, relation_loss
from .metrics import AUMetrics
from .model import MEFL, MEFLOutput
from .norm import SlotBatchNorm
from .ops import gather_matmul
from .training import FaceAUModel, au_targets, fit

__version__ = "0.1.0"

__all__ = [
    "AUFeatureBlocks", "AUMetrics", "BP4D_AUS", "CrossAttention", "DISFA_AUS", "FaceAUModel",
    "FaceGraphDataset", "GatedGNN", "GatedGNNLayer", "GraphEdgeModel", "ImageListFaceDataset",
    "LinearBlock", "MEFL", "MEFLLoss", "MEFLOutput", "OPENGRAPHAU_MAIN_AUS",
    "OPENGRAPHAU_SUB_AUS", "ResNet50Tokens", "SlotBatchNorm", "SmallCNN", "SyntheticFaceDataset",
    "TokenFaceDataset", "WeightedAsymmetricLoss", "au_class_weights", "au_targets",
    "build_backbone", "complete_au_graph", "edge_slots", "face_graph", "fit", "gather_matmul",
    "relation_labels", "vocabulary_ids",
]
