"""The layers: cross-attention, per-slot norm, linear blocks, the graph edge model, the gated
GNN and the MEFL head, the facial kNN graph and the stage-1 ANFL head. Their fast paths and
kernels live in :mod:`.fused`."""
from .anfl import ANFL, ANFLLayer
from .attention import CrossAttention
from .blocks import AUFeatureBlocks, LinearBlock
from .facial_graph import au_knn_graph
from .gem import GraphEdgeModel
from .gnn import GatedGNN, GatedGNNLayer
from .mefl import MEFL, MEFLOutput
from .norm import SlotBatchNorm
from .fused.ops import gather_matmul as gather_matmul  # a kernel; kept for earlier imports
from .sync_norm import SyncedBatchNorm

__all__ = ["ANFL", "ANFLLayer", "AUFeatureBlocks", "CrossAttention", "GatedGNN", "GatedGNNLayer",
           "GraphEdgeModel", "LinearBlock", "MEFL", "MEFLOutput", "SlotBatchNorm",
           "SyncedBatchNorm", "au_knn_graph"]
