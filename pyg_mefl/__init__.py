"""pyg_mefl: MEFL (multi-dimensional edge feature learning) for facial action units as
PyTorch Geometric layers."""
from .attention import CrossAttention
from .aus import BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS
from .blocks import AUFeatureBlocks, LinearBlock
from .gem import GraphEdgeModel
from .gnn import GatedGNN, GatedGNNLayer
from .graph import complete_au_graph, edge_slots, face_graph, relation_labels
from .model import MEFL, MEFLOutput
from .norm import SlotBatchNorm
from .ops import gather_matmul
from .backbones import ResNet50Tokens, SmallCNN, build_backbone
from .datasets import (FaceGraphDataset, ImageListFaceDataset, SyntheticFaceDataset,
                       TokenFaceDataset, vocabulary_ids)
from .losses import MEFLLoss, WeightedAsymmetricLoss, au_class_weights, relation_loss
from .metrics import AUMetrics
from .training import FaceAUModel, au_targets, fit

__version__ = "0.1.0"

__all__ = [
    "AUFeatureBlocks", "BP4D_AUS", "CrossAttention", "DISFA_AUS", "GatedGNN", "GatedGNNLayer",
    "GraphEdgeModel", "LinearBlock", "MEFL", "MEFLOutput", "OPENGRAPHAU_MAIN_AUS",
    "OPENGRAPHAU_SUB_AUS", "SlotBatchNorm", "complete_au_graph", "edge_slots", "face_graph",
    "gather_matmul", "relation_labels",
]
__all__ += [
    "AUMetrics", "FaceAUModel", "FaceGraphDataset", "ImageListFaceDataset", "MEFLLoss",
    "ResNet50Tokens", "SmallCNN", "SyntheticFaceDataset", "TokenFaceDataset",
    "WeightedAsymmetricLoss", "au_class_weights", "au_targets", "build_backbone", "fit",
    "relation_loss", "vocabulary_ids",
]
