"""pyg_mefl: MEFL (multi-dimensional edge feature learning) for facial action units as
PyTorch Geometric layers."""
from .data import (BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS,
                   FaceGraphDataset, ImageListFaceDataset, SyntheticFaceDataset, TokenFaceDataset,
                   GraphLayout, complete_au_graph, edge_slots, face_graph, relation_labels,
                   uniform_in_degree, vocabulary_ids)
from .faces import FaceAUPipeline, FaceDetector, FaceTracker
from .models import (FaceAUModel, ImageTokens, ResNet50Tokens, ResNetTokens, SmallCNN,
                     SwinTokens, build_backbone, published_transform)
from .nn import (ANFL, MEFL, ANFLLayer, AUFeatureBlocks, CrossAttention, GatedGNN, GatedGNNLayer,
                 GraphEdgeModel, LinearBlock, MEFLOutput, SlotBatchNorm, SyncedBatchNorm,
                 au_knn_graph)
# a kernel (its home is pyg_mefl.nn), importable from here for code written for the first release
from .nn import gather_matmul as gather_matmul
from .pretrained import anfl_head_to_published, detect_stage, load_anfl_head
from .train import (AUMetrics, MEFLLoss, TokenMLP, WeightedAsymmetricLoss, au_class_weights,
                    au_targets, calibrate_thresholds, fit, init_distributed, relation_loss,
                    ridge_probe, synchronise_norms, token_mlp_probe, warmup_cosine_schedule)
from .transforms import (AddTokenPosition, CenterTokens, StandardizeChannels, StandardizeTokens,
                         TokenNorm, load_token_norm)
from .utils.version import __version__ as __version__


__all__ = [
    "ANFL", "ANFLLayer", "AUFeatureBlocks", "AUMetrics", "AddTokenPosition", "BP4D_AUS",
    "CenterTokens", "CrossAttention", "DISFA_AUS", "FaceAUModel", "FaceAUPipeline",
    "FaceDetector", "FaceGraphDataset", "FaceTracker",
    "GatedGNN", "GatedGNNLayer", "GraphEdgeModel", "GraphLayout", "ImageListFaceDataset",
    "ImageTokens", "LinearBlock", "MEFL", "MEFLLoss", "MEFLOutput", "OPENGRAPHAU_MAIN_AUS",
    "OPENGRAPHAU_SUB_AUS", "ResNet50Tokens", "ResNetTokens", "SlotBatchNorm", "SmallCNN",
    "StandardizeChannels", "StandardizeTokens", "SwinTokens", "SyncedBatchNorm",
    "SyntheticFaceDataset", "TokenFaceDataset", "TokenMLP", "TokenNorm",
    "WeightedAsymmetricLoss", "anfl_head_to_published", "au_class_weights", "au_knn_graph",
    "au_targets", "build_backbone", "calibrate_thresholds", "complete_au_graph",
    "detect_stage", "edge_slots", "face_graph", "fit", "init_distributed",
    "load_anfl_head", "load_token_norm", "published_transform", "relation_labels",
    "relation_loss", "ridge_probe", "synchronise_norms", "token_mlp_probe",
    "uniform_in_degree", "vocabulary_ids", "warmup_cosine_schedule",
]
