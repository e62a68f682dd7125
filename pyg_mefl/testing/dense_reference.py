"""Dense reference implementation of MEFL (test oracle and speed/memory baseline).

Plain torch, written from /work/shared/SPEC.md in the batched dense form the
published ME-GraphAU / OpenGraphAU / mexca code uses: the N^2 edge slots are built
by repeating node tensors, edge ``e = i*N + j`` is ``j -> i`` (source j, target i),
and all BatchNorms over slots are per-slot (BatchNorm1d/2d with N or N*N channels).

Also holds the checkpoint layout converters of SPEC section 8 (``to_layout``, ``wrap``).
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

SUB_AU_MAIN_INDEX = (0, 1, 2, 4, 7, 8, 11)
"""Main node scoring each sub pair k (published mapping, SPEC section 6)."""

LAYOUTS = ("mexca", "opengraphau", "me-graphau")


def _bn_init(bn):
    bn.weight.data.fill_(1.0)
    bn.bias.data.zero_()


class DenseLinearBlock(nn.Module):
    """``ReLU(BN(Linear(Dropout(x))))`` on ``[B, D, C_in]`` (SPEC section 1)."""

    def __init__(self, in_channels, out_channels, dropout=0.0):
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)
        self.bn = nn.BatchNorm1d(out_channels)
        self.drop = nn.Dropout(p=dropout)
        self.fc.weight.data.normal_(0.0, math.sqrt(2.0 / out_channels))
        _bn_init(self.bn)

    def forward(self, x):
        x = self.fc(self.drop(x)).permute(0, 2, 1)
        return F.relu(self.bn(x)).permute(0, 2, 1)


class DenseCrossAttention(nn.Module):
    """``softmax(q(y) k(x)^T / sqrt(C/2)) v(x)``, softmax over keys (SPEC section 3)."""

    def __init__(self, in_channels):
        super().__init__()
        self.linear_q = nn.Linear(in_channels, in_channels // 2)
        self.linear_k = nn.Linear(in_channels, in_channels // 2)
        self.linear_v = nn.Linear(in_channels, in_channels)
        self.scale = (in_channels // 2) ** -0.5
        for linear in (self.linear_q, self.linear_k, self.linear_v):
            linear.weight.data.normal_(0.0, math.sqrt(2.0 / linear.out_features))

    def forward(self, y, x):
        query = self.linear_q(y)
        key = self.linear_k(x)
        value = self.linear_v(x)
        attn = torch.softmax(torch.matmul(query, key.transpose(-2, -1)) * self.scale, dim=-1)
        return torch.matmul(attn, value)


class DenseGEM(nn.Module):
    """Graph edge model: FAM, ARM over all N^2 slots, projection, BatchNorm2d(N*N) (SPEC
    section 4)."""

    def __init__(self, in_channels, num_nodes):
        super().__init__()
        self.num_nodes = num_nodes
        self.fam = DenseCrossAttention(in_channels)
        self.arm = DenseCrossAttention(in_channels)
        self.edge_proj = nn.Linear(in_channels, in_channels)
        self.bn = nn.BatchNorm2d(num_nodes * num_nodes)
        self.edge_proj.weight.data.normal_(0.0, math.sqrt(2.0 / in_channels))
        _bn_init(self.bn)

    def forward(self, class_feature, global_feature):
        """``class_feature [B, N, D, C]``, ``global_feature [B, D, C]`` -> ``[B, N*N, D, C]``."""
        B, N, D, C = class_feature.shape
        global_feature = global_feature.repeat(1, N, 1).view(B, N, D, C)
        feat = self.fam(class_feature, global_feature)
        feat_end = feat.repeat(1, 1, N, 1).view(B, N * N, D, C)  # slot i*N+j -> feat[i] (target)
        feat_start = feat.repeat(1, N, 1, 1).view(B, N * N, D, C)  # slot i*N+j -> feat[j] (source)
        edge = self.arm(feat_start, feat_end)
        return self.bn(self.edge_proj(edge))


def incidence_matrices(num_nodes):
    """Dense one-hot ``start, end`` of shape ``[N*N, N]``:
    ``start[i*N+j, j] = end[i*N+j, i] = 1``."""
    eye = torch.eye(num_nodes)
    start = eye.repeat(num_nodes, 1)
    end = eye.repeat_interleave(num_nodes, dim=0)
    return start, end


class DenseGatedGNNLayer(nn.Module):
    """Residual gated graph conv layer with edge update on the complete graph (SPEC section 5)."""

    def __init__(self, in_channels, num_nodes, residual="post"):
        super().__init__()
        if residual not in ("post", "pre"):
            raise ValueError(f"residual must be 'post' or 'pre', got {residual!r}")
        self.num_nodes = num_nodes
        self.residual = residual
        self.linear_u = nn.Linear(in_channels, in_channels, bias=False)
        self.linear_v = nn.Linear(in_channels, in_channels, bias=False)
        self.linear_a = nn.Linear(in_channels, in_channels, bias=False)
        self.linear_b = nn.Linear(in_channels, in_channels, bias=False)
        self.linear_e = nn.Linear(in_channels, in_channels, bias=False)
        self.bnv = nn.BatchNorm1d(num_nodes)
        self.bne = nn.BatchNorm1d(num_nodes * num_nodes)
        for linear in (self.linear_u, self.linear_v, self.linear_a, self.linear_b, self.linear_e):
            linear.weight.data.normal_(0.0, math.sqrt(2.0 / in_channels))
        _bn_init(self.bnv)
        _bn_init(self.bne)
        start, end = incidence_matrices(num_nodes)
        self.register_buffer("start", start, persistent=False)
        self.register_buffer("end", end, persistent=False)

    def update_edges(self, v, e):
        """``ê = e + ReLU(bne(A v_target + B v_source + E e))``; ``v [B, N, C]``,
        ``e [B, N*N, C]``."""
        message = (torch.einsum("ev,bvc->bec", self.end, self.linear_a(v))
                   + torch.einsum("ev,bvc->bec", self.start, self.linear_b(v))
                   + self.linear_e(e))
        return e + F.relu(self.bne(message))

    def edge_gate(self, e_hat):
        """``softmax_j sigmoid(ê_{j->i})`` per channel, returned as ``[B, N*N, C]``."""
        B, _, C = e_hat.shape
        gate = torch.sigmoid(e_hat).view(B, self.num_nodes, self.num_nodes, C)
        return torch.softmax(gate, dim=2).view(B, -1, C)

    def forward(self, v, e):
        """Returns ``(v_new [B, N, C], e_hat [B, N*N, C])``."""
        e_hat = self.update_edges(v, e)
        gate = self.edge_gate(e_hat)
        source_values = torch.einsum("ev,bvc->bec", self.start, self.linear_v(v))
        aggregated = torch.einsum("ve,bec->bvc", self.end.t(),
                                  gate * source_values) / self.num_nodes
        v_update = self.bnv(self.linear_u(v) + aggregated)
        if self.residual == "post":
            v_new = v + F.relu(v_update)
        else:
            v_new = F.relu(v + v_update)
        return v_new, e_hat


class DenseGatedGNN(nn.Module):
    """Stack of ``num_layers`` DenseGatedGNNLayer (SPEC section 5)."""

    def __init__(self, in_channels, num_nodes, num_layers=2, residual="post"):
        super().__init__()
        self.graph_layers = nn.ModuleList(
            DenseGatedGNNLayer(in_channels, num_nodes, residual) for _ in range(num_layers))

    def forward(self, v, e):
        for layer in self.graph_layers:
            v, e = layer(v, e)
        return v, e


def _cosine_to_prototype(node_features, prototypes):
    """``(normalize(v) * normalize(ReLU(s))).sum(-1)``, the published SC form (SPEC section 6)."""
    return (F.normalize(node_features, p=2, dim=-1)
            * F.normalize(F.relu(prototypes), p=2, dim=-1)).sum(dim=-1)


class DenseMEFL(nn.Module):
    """Full MEFL head (AFG, GEM, gated GNN, SC heads, optional edge head), mexca naming (SPEC
    sections 2-6)."""

    def __init__(self, in_channels, num_main_aus=27, num_sub_aus=14, residual="post",
                 edge_head=False, num_layers=2):
        super().__init__()
        if num_sub_aus not in (0, 2 * len(SUB_AU_MAIN_INDEX)):
            raise ValueError(f"num_sub_aus must be 0 or 14, got {num_sub_aus}")
        if num_sub_aus and num_main_aus <= max(SUB_AU_MAIN_INDEX):
            raise ValueError("sub AUs need at least 12 main AUs")
        self.num_main_aus = num_main_aus
        self.num_sub_aus = num_sub_aus
        self.main_node_linear_layers = nn.ModuleList(
            DenseLinearBlock(in_channels, in_channels) for _ in range(num_main_aus))
        self.edge_extractor = DenseGEM(in_channels, num_main_aus)
        self.gnn = DenseGatedGNN(in_channels, num_main_aus, num_layers, residual)
        self.main_sc = nn.Parameter(torch.empty(num_main_aus, in_channels))
        nn.init.xavier_uniform_(self.main_sc)
        if num_sub_aus:
            self.sub_sc = nn.Parameter(torch.empty(num_sub_aus, in_channels))
            nn.init.xavier_uniform_(self.sub_sc)
        self.edge_fc = nn.Linear(in_channels, 4) if edge_head else None
        if edge_head:
            nn.init.xavier_uniform_(self.edge_fc.weight)

    def forward(self, x):
        """``x [B, D, C]`` -> dict with

        - ``probs`` ``[B, N + S]`` (N main, then S sub),
        - ``gem_edge_attr`` ``[B, N*N, C]`` (GEM output averaged over tokens),
        - ``edge_attr`` ``[B, N*N, C]`` (final ê after the GNN),
        - ``node_attr`` ``[B, N, C]`` (final node features after the GNN),
        - ``edge_logits`` ``[B, N*N, 4]`` or ``None``.
        """
        class_feature = torch.stack([layer(x) for layer in self.main_node_linear_layers], dim=1)
        node_attr = class_feature.mean(dim=-2)
        gem_edge_attr = self.edge_extractor(class_feature, x).mean(dim=-2)
        node_attr, edge_attr = self.gnn(node_attr, gem_edge_attr)

        probs = _cosine_to_prototype(node_attr, self.main_sc.unsqueeze(0))
        if self.num_sub_aus:
            sub_nodes = node_attr[:, list(SUB_AU_MAIN_INDEX)].repeat_interleave(2, dim=1)
            sub_probs = _cosine_to_prototype(sub_nodes, self.sub_sc.unsqueeze(0))
            probs = torch.cat([probs, sub_probs], dim=-1)
        edge_logits = self.edge_fc(edge_attr) if self.edge_fc is not None else None
        return {"probs": probs, "gem_edge_attr": gem_edge_attr, "edge_attr": edge_attr,
                "node_attr": node_attr, "edge_logits": edge_logits}


# ----------------------------------------------------------------------------------
# Checkpoint layouts (SPEC section 8)
# ----------------------------------------------------------------------------------

_GNN_LINEARS = {"linear_u": "U", "linear_v": "V", "linear_a": "A", "linear_b": "B", "linear_e": "E"}


def _rename_head_key(key, layout):
    """Map one DenseMEFL (mexca head) key to ``layout``."""
    if layout == "mexca":
        return key
    parts = key.split(".")
    if parts[0] == "main_node_linear_layers":
        parts[0] = "main_class_linears" if layout == "opengraphau" else "class_linears"
    elif parts[0] == "edge_extractor" and parts[1] in ("fam", "arm"):
        parts[1] = parts[1].upper()
    elif parts[0] == "gnn":
        _, _, layer, module, *rest = parts  # gnn.graph_layers.<l>.<module>.<param>
        module = _GNN_LINEARS.get(module, module)
        if layout == "opengraphau":
            parts = ["gnn", "graph_layers", layer, module, *rest]
        else:
            parts = ["gnn", f"{module}{int(layer) + 1}", *rest]
    elif parts[0] == "main_sc" and layout == "me-graphau":
        parts[0] = "sc"
    elif parts[0] == "sub_sc" and layout == "me-graphau":
        raise ValueError("the me-graphau layout has no sub AUs (sub_sc)")
    return ".".join(parts)


def to_layout(state_dict, layout, whole_model=False, global_linear=None, backbone=None):
    """Convert a DenseMEFL state dict to a published checkpoint layout (SPEC section 8).

    ``layout``: "mexca", "opengraphau" or "me-graphau". With ``whole_model`` every head
    key gets the ``head.`` prefix, the keys of the DenseLinearBlock state dict
    ``global_linear`` (if given) go under ``linear_global.`` (mexca) or
    ``global_linear.`` (others), and ``backbone`` (a dict) is copied with its keys as
    given. ``edge_fc`` keys are kept unchanged in every layout. Returns an OrderedDict
    sharing the input tensors.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    head = OrderedDict((_rename_head_key(k, layout), v) for k, v in state_dict.items())
    if not whole_model:
        return head
    out = OrderedDict(backbone or {})
    global_prefix = "linear_global." if layout == "mexca" else "global_linear."
    for key, value in (global_linear or {}).items():
        out[global_prefix + key] = value
    for key, value in head.items():
        out["head." + key] = value
    return out


def wrap(sd, state_dict_wrapper=False, module_prefix=False):
    """Optionally prefix every key with ``module.`` and/or wrap as ``{"state_dict": sd}``."""
    if module_prefix:
        sd = OrderedDict(("module." + k, v) for k, v in sd.items())
    return {"state_dict": sd} if state_dict_wrapper else sd
