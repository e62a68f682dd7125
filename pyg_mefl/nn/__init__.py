"""The layers: cross-attention, per-slot norm, linear blocks, the graph edge model, the gated
GNN and the MEFL head, with the fused per-edge kernels they use (:mod:`.ops`)."""
from .attention import CrossAttention
from .blocks import AUFeatureBlocks, LinearBlock
from .gem import GraphEdgeModel
from .gnn import GatedGNN, GatedGNNLayer
from .mefl import MEFL, MEFLOutput
from .norm import SlotBatchNorm
from .ops import gather_matmul

__all__ = ["AUFeatureBlocks", "CrossAttention", "GatedGNN", "GatedGNNLayer", "GraphEdgeModel",
           "LinearBlock", "MEFL", "MEFLOutput", "SlotBatchNorm", "gather_matmul"]
