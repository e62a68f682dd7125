"""Workloads of the head benchmarks (modes ``head``, ``bounds``, ``layouts``, ``cuda``): models and
inputs, one step of each mode, FLOP counts, the ``mode:BxN`` configurations.

Shapes: D = ``TOKENS`` tokens, C = ``CHANNELS`` channels, N main AUs and ``sub_aus(N)`` sub
AUs. ``build`` gives a model of either implementation ("dense":
``pyg_mefl.testing.dense_reference``; "pyg": ``pyg_mefl.MEFL``), with per-face
k-nearest-neighbour graphs for ``knn``; ``gnn_layer_step`` one GatedGNNLayer on a complete,
random or CSR-sorted AU graph.
"""
import argparse
import math
from collections import Counter

TOKENS, CHANNELS = 49, 512


def sub_aus(num_aus: int) -> int:
    return 14 if num_aus == 27 else 0


def parse_configs(text: str) -> list:
    """``"eval:8x27,train:32x27"`` as ``[("eval", 8, 27), ("train", 32, 27)]`` (mode, B, N); an
    argparse type (its error is the message argparse prints)."""
    configs = []
    for item in text.split(","):
        mode, _, size = item.partition(":")
        faces, _, aus = size.partition("x")
        if mode not in ("eval", "train") or not faces.isdigit() or not aus.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected mode:BxN items with mode eval or train, got {item!r}")
        configs.append((mode, int(faces), int(aus)))
    return configs


def knn_edge_index(features, k: int):
    """Per face: each target AU's k most similar AUs (cosine similarity of ``features`` [N, C]),
    itself included, as sources; edges grouped by target, sources ascending."""
    import torch
    import torch.nn.functional as F
    num = features.size(0)
    unit = F.normalize(features, dim=-1)
    sim = unit @ unit.t()
    sim.fill_diagonal_(float("inf"))  # the self-loop is always kept
    source = sim.topk(k, dim=1).indices.sort(dim=1).values  # [N, k]
    target = torch.arange(num).unsqueeze(1).expand(num, k)
    return torch.stack([source.reshape(-1), target.reshape(-1)])


def build(impl: str, num_faces: int, num_aus: int, knn: int = 0, channels: int = CHANNELS,
          tokens: int = TOKENS, seed: int = 0):
    """Model and input of one configuration; the input is a tensor, or a Batch for ``knn``."""
    import torch
    torch.manual_seed(seed)
    x = torch.randn(num_faces, tokens, channels)
    if impl == "dense":
        from pyg_mefl.testing.dense_reference import DenseMEFL
        return DenseMEFL(channels, num_aus, sub_aus(num_aus)), x
    from pyg_mefl import MEFL, face_graph
    from torch_geometric.data import Batch
    model = MEFL(channels, num_aus, sub_aus(num_aus))
    if not knn:
        return model, x
    with torch.no_grad():
        model.eval()
        au_id = torch.arange(num_aus).repeat(num_faces)
        batch = torch.arange(num_faces).repeat_interleave(num_aus)
        nodes = model.afg(x, au_id, batch).mean(dim=1).view(num_faces, num_aus, -1)
    graphs = [face_graph(x[b], num_aus, edge_index=knn_edge_index(nodes[b], knn))
              for b in range(num_faces)]
    return model, Batch.from_data_list(graphs)


def make_step(model, x, mode: str):
    import torch

    def probs(out):
        return out["probs"] if isinstance(out, dict) else out

    if mode == "eval":
        model.eval()

        def step():
            with torch.no_grad():
                return probs(model(x))
    else:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            p = probs(model(x))
            loss = -(p.clamp(1e-8, 1.0).log()).mean()  # any scalar of all outputs will do
            loss.backward()
            return loss
    return step


PRODUCTS = ("aten.mm", "aten.addmm", "aten.addmm_", "aten.bmm", "aten.baddbmm", "aten.baddbmm_")
"""The matrix products a step is counted by (torch's ``FlopCounterMode`` misses the in-place
``addmm_``/``baddbmm_``, which pyg_mefl's inference and backward passes use)."""


def matrix_products(step) -> Counter:
    """``(shape_a, shape_b, stride_a, stride_b) -> count`` of the matrix products one call of
    ``step`` dispatches (``a @ b``, in any of their out-of-place, ``out=`` or in-place forms)."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = collections.Counter()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func._overloadpacket) in PRODUCTS:
                a, b = [arg for arg in args if isinstance(arg, torch.Tensor)][-2:]
                calls[(tuple(a.shape), tuple(b.shape), a.stride(), b.stride())] += 1
            return func(*args, **(kwargs or {}))

    with Recorder():
        step()
    return calls


def product_flops(shape_a, shape_b) -> int:
    """2 m k n (per batch entry) of ``a @ b``."""
    return 2 * math.prod(shape_a) * shape_b[-1]


def count_flops(step) -> float:
    """FLOPs of the matrix products of one call of ``step``."""
    return float(sum(count * product_flops(shape_a, shape_b)
                     for (shape_a, shape_b, _, _), count in matrix_products(step).items()))


def gnn_layer_step(graph: str, faces: int, num: int, mode: str):
    """One GatedGNNLayer (norm='slot', C = 512) on ``faces`` faces of ``num`` AUs, given as
    ``uniform`` (complete graphs, edges grouped by target, ``in_degree`` given: reshape fast
    path), ``scatter`` (random in-degrees, edges in random order: index-based scatter
    softmax/aggregation) or
    ``segment`` (the same random graph sorted by target as a ``torch_geometric.EdgeIndex``: PyG
    hands a CSR ``ptr`` to the softmax). Returns the step and the number of edges."""
    import torch
    from torch_geometric import EdgeIndex
    from pyg_mefl import GatedGNNLayer, complete_au_graph, edge_slots
    layer = GatedGNNLayer(CHANNELS, norm="slot", num_node_slots=num, num_edge_slots=num * num)
    au_id = torch.arange(num).repeat(faces)
    edge_index = complete_au_graph(num, faces)
    if graph != "uniform":
        edge_index = edge_index[:, torch.rand(edge_index.size(1)) < 0.5]  # random in-degrees
        edge_index = edge_index[:, torch.randperm(edge_index.size(1))]
    edge_slot = edge_slots(edge_index, au_id, num)
    if graph == "segment":
        order = edge_index[1].argsort(stable=True)
        edge_index, edge_slot = edge_index[:, order], edge_slot[order]
        edge_index = EdgeIndex(edge_index, sparse_size=(faces * num, faces * num),
                               sort_order="col")
    x = torch.randn(faces * num, CHANNELS)
    edge_attr = torch.randn(edge_index.size(1), CHANNELS, requires_grad=mode == "train")
    layer.train(mode == "train")
    in_degree = num if graph == "uniform" else None  # a fact of the complete graph

    def step():
        if mode == "eval":
            with torch.no_grad():
                return layer(x, edge_index, edge_attr, au_id, edge_slot, in_degree)
        out, edges = layer(x, edge_index, edge_attr, au_id, edge_slot, in_degree)
        (out.sum() + edges.sum()).backward()

    return step, int(edge_index.size(1))
