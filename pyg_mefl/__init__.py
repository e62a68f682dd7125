"""pyg_mefl: MEFL (multi-dimensional edge feature learning) for facial action units as
PyTorch Geometric layers."""
from .data import (BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS,
                   FaceGraphDataset, ImageListFaceDataset, SyntheticFaceDataset, TokenFaceDataset,
                   complete_au_graph, edge_slots, face_graph, relation_labels, vocabulary_ids)
from .models import FaceAUModel, ResNet50Tokens, SmallCNN, build_backbone
from .nn import (ANFL, MEFL, ANFLLayer, AUFeatureBlocks, CrossAttention, GatedGNN, GatedGNNLayer,
                 GraphEdgeModel, LinearBlock, MEFLOutput, SlotBatchNorm, au_knn_graph,
                 gather_matmul)
from .pretrained import anfl_head_to_published, detect_stage, load_anfl_head
from .train import (AUMetrics, MEFLLoss, WeightedAsymmetricLoss, au_class_weights, au_targets,
                    fit, relation_loss)

__version__ = "0.1.0"

__all__ = [
    "ANFL", "ANFLLayer", "AUFeatureBlocks", "AUMetrics", "BP4D_AUS", "CrossAttention", "DISFA_AUS",
    "FaceAUModel",
    "FaceGraphDataset", "GatedGNN", "GatedGNNLayer", "GraphEdgeModel", "ImageListFaceDataset",
    "LinearBlock", "MEFL", "MEFLLoss", "MEFLOutput", "OPENGRAPHAU_MAIN_AUS",
    "OPENGRAPHAU_SUB_AUS", "ResNet50Tokens", "SlotBatchNorm", "SmallCNN", "SyntheticFaceDataset",
    "TokenFaceDataset", "WeightedAsymmetricLoss", "anfl_head_to_published", "au_class_weights",
    "au_knn_graph", "au_targets",
    "build_backbone", "complete_au_graph", "detect_stage", "edge_slots", "face_graph", "fit",
    "gather_matmul", "load_anfl_head",
    "relation_labels", "vocabulary_ids",
]
