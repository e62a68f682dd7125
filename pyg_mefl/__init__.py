"""pyg_mefl: MEFL (multi-dimensional edge feature learning) for facial action units as
PyTorch Geometric layers."""
from .data import (BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS,
                   FaceGraphDataset, ImageListFaceDataset, SyntheticFaceDataset, TokenFaceDataset,
                   complete_au_graph, edge_slots, face_graph, relation_labels, vocabulary_ids)
from .models import FaceAUModel, ResNet50Tokens, SmallCNN, build_backbone
from .nn import (MEFL, AUFeatureBlocks, CrossAttention, GatedGNN, GatedGNNLayer, GraphEdgeModel,
                 LinearBlock, MEFLOutput, SlotBatchNorm, gather_matmul)
from .train import (AUMetrics, MEFLLoss, WeightedAsymmetricLoss, au_class_weights, au_targets,
                    fit, relation_loss)

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
