"""Dense reference of the stage-1 ANFL head (test oracle), written from SPEC.md §9.

Plain torch in the batched dense form of the published code: per face a similarity matrix
``S = V V^T`` of the detached node features (rows L2-normalised for "cosine"), the adjacency
``A_ij = [S_ij >= K-th largest of row i]``, ``Â = diag(d)^-1/2 A diag(d)^-1/2`` with row degrees,
one layer ``ReLU(V + BatchNorm1d(N)(Â Lin_V(V) + Lin_U(V)))`` with biased maps, and the SC head.
Parameters carry the OpenGraphAU names; ``to_anfl_layout`` renames them to each published
stage-1 layout, in that layout's key order.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .dense_reference import SUB_AU_MAIN_INDEX, DenseLinearBlock, _cosine_to_prototype


def knn_adjacency(node_features, k, metric="dots"):
    """``[B, N, N]`` 0/1 adjacency: row ``i`` marks every ``j`` with ``S_ij >= top_k(S_i)``."""
    features = node_features.detach()
    if metric == "cosine":
        features = F.normalize(features, p=2, dim=-1)
    similarity = torch.einsum("bic,bjc->bij", features, features)
    threshold = similarity.topk(k, dim=-1).values[:, :, -1:]
    return (similarity >= threshold).to(node_features.dtype)


def normalize_rows_and_columns(adjacency):
    """``Â_ij = A_ij / sqrt(d_i d_j)`` with the row degrees ``d_i = sum_j A_ij``."""
    inverse_sqrt = adjacency.sum(dim=-1).pow(-0.5)
    return inverse_sqrt.unsqueeze(-1) * adjacency * inverse_sqrt.unsqueeze(-2)


class DenseANFLGNN(nn.Module):
    """One ANFL graph layer on the dense facial graph."""

    def __init__(self, in_channels, num_nodes, neighbor_num=4, metric="dots"):
        super().__init__()
        self.neighbor_num = neighbor_num
        self.metric = metric
        self.U = nn.Linear(in_channels, in_channels)
        self.V = nn.Linear(in_channels, in_channels)
        self.bnv = nn.BatchNorm1d(num_nodes)
        for linear in (self.U, self.V):
            linear.weight.data.normal_(0.0, math.sqrt(2.0 / in_channels))

    def forward(self, v):
        adjacency = normalize_rows_and_columns(knn_adjacency(v, self.neighbor_num, self.metric))
        aggregated = torch.einsum("bij,bjc->bic", adjacency, self.V(v))
        return F.relu(v + self.bnv(aggregated + self.U(v)))


class DenseANFL(nn.Module):
    """The stage-1 head: AFG, facial graph layer, SC heads (OpenGraphAU names)."""

    def __init__(self, in_channels, num_main_aus=27, num_sub_aus=14, neighbor_num=4,
                 metric="dots"):
        super().__init__()
        if num_sub_aus not in (0, 2 * len(SUB_AU_MAIN_INDEX)):
            raise ValueError(f"num_sub_aus must be 0 or 14, got {num_sub_aus}")
        self.num_sub_aus = num_sub_aus
        self.main_sc = nn.Parameter(torch.empty(num_main_aus, in_channels))
        nn.init.xavier_uniform_(self.main_sc)
        if num_sub_aus:
            self.sub_sc = nn.Parameter(torch.empty(num_sub_aus, in_channels))
            nn.init.xavier_uniform_(self.sub_sc)
        self.main_class_linears = nn.ModuleList(
            DenseLinearBlock(in_channels, in_channels) for _ in range(num_main_aus))
        self.gnn = DenseANFLGNN(in_channels, num_main_aus, neighbor_num, metric)

    def forward(self, x):
        """``x [B, D, C]`` -> probabilities ``[B, N + S]``."""
        nodes = torch.stack([block(x) for block in self.main_class_linears], dim=1).mean(dim=-2)
        nodes = self.gnn(nodes)
        probs = _cosine_to_prototype(nodes, self.main_sc.unsqueeze(0))
        if self.num_sub_aus:
            sub_nodes = nodes[:, list(SUB_AU_MAIN_INDEX)].repeat_interleave(2, dim=1)
            probs = torch.cat([probs, _cosine_to_prototype(sub_nodes, self.sub_sc.unsqueeze(0))],
                              dim=-1)
        return probs


def to_anfl_layout(state_dict, layout):
    """A DenseANFL state dict under a published stage-1 layout's names and key order."""
    if layout == "opengraphau":
        return OrderedDict(state_dict)
    if layout == "me-graphau":
        if "sub_sc" in state_dict:
            raise ValueError("the me-graphau layout has no sub AUs")
        return OrderedDict((_me_graphau_key(k), v) for k, v in state_dict.items())
    if layout != "mexca":
        raise ValueError(f"unknown layout {layout!r}")
    blocks = OrderedDict((k.replace("main_class_linears", "afg.main_node_linear_layers"), v)
                         for k, v in state_dict.items() if k.startswith("main_class_linears"))
    rest = OrderedDict((f"fgg.{k}".replace("gnn.U.", "gnn.linear_u.")
                        .replace("gnn.V.", "gnn.linear_v."), v)
                       for k, v in state_dict.items() if not k.startswith("main_class_linears"))
    return OrderedDict(list(blocks.items()) + list(rest.items()))


def _me_graphau_key(key):
    if key == "main_sc":
        return "sc"
    return key.replace("main_class_linears", "class_linears")
