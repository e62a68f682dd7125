"""The fast paths of ``pyg_mefl/nn/gnn.py`` (``GatedGNNLayer``) against its scatter path (float64,
values and gradients): the reshape softmax and aggregation on uniform graphs (``in_degree``
runs, complete graphs with slot norms per slot index or cyclic), with autograd and in the
in-place inference update, against the same graphs with shuffled edges.
No timing here: see `python -m benchmarks head`.
"""
import pytest
import torch

from paths_helpers import DTYPE, _grads
from pyg_mefl import GatedGNNLayer, GraphLayout, complete_au_graph, edge_slots, uniform_in_degree


@pytest.mark.parametrize("norm", ["slot", "batch", None])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("aggr", ["mean", "sum"])
@pytest.mark.parametrize("path", ["runs", "complete", "complete-cyclic"])
def test_gnn_uniform_fast_path_matches_scatter_path(norm, training, aggr, path):
    """Runs of ``in_degree`` edges per target, and complete graphs (source terms broadcast, slot
    norms per slot index or cyclic), against the same graphs with shuffled edges (scatter
    softmax and aggregation); with autograd and without (the in-place inference update)."""
    num_faces, num_aus, channels = 3, 5, 7
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    layer = GatedGNNLayer(channels, norm=norm, num_node_slots=num_aus,
                          num_edge_slots=num_aus ** 2, aggr=aggr).to(DTYPE).train(training)
    _randomize_norms(layer, generator)
    edge_index = complete_au_graph(num_aus, num_faces)  # runs of num_aus edges per target
    assert uniform_in_degree(edge_index, num_faces * num_aus) == num_aus
    perm = torch.randperm(edge_index.size(1), generator=generator)  # same graph, scatter path
    au_id = torch.arange(num_aus).repeat(num_faces)
    x = torch.randn(num_faces * num_aus, channels, dtype=DTYPE, generator=generator,
                    requires_grad=True)
    edge_attr = torch.randn(edge_index.size(1), channels, dtype=DTYPE, generator=generator,
                            requires_grad=True)
    slot = edge_slots(edge_index, au_id, num_aus)
    # runs: only the in-degree is stated; complete: the face blocks too; complete-cyclic: and
    # the AU ids in order, so that the rows cycle through the slot norms' slots
    layout = GraphLayout(in_degree=num_aus) if path == "runs" else \
        GraphLayout(num_aus, num_aus, True, True, True, path == "complete-cyclic")
    fast_args = (x, edge_index, edge_attr, au_id, slot, layout)

    state = {k: v.clone() for k, v in layer.state_dict().items()}
    out, edges = layer(*fast_args)
    # before the next call updates the running statistics the fused batch norm's backward reads
    total = _grads(torch.cat([out.flatten(), edges[perm].flatten()]), (x, edge_attr))
    out_ref, edges_ref = layer(x, edge_index[:, perm], edge_attr[perm], au_id, slot[perm])
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(edges[perm], edges_ref, rtol=1e-10, atol=1e-10)
    total_ref = _grads(torch.cat([out_ref.flatten(), edges_ref.flatten()]), (x, edge_attr))
    for got, want in zip(total, total_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)

    layer.load_state_dict(state)  # the same running statistics as the first call
    edge_attr_before = edge_attr.detach().clone()
    with torch.no_grad():
        out_inference, edges_inference = layer(*fast_args)
    torch.testing.assert_close(out_inference, out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(edges_inference, edges, rtol=1e-10, atol=1e-10)
    assert torch.equal(edge_attr, edge_attr_before)  # the caller's edges are never written


def _randomize_norms(module, generator):
    """Distinct affine parameters and running statistics for every slot or channel."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if "norm" in name and tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, dtype=tensor.dtype, generator=generator)
                             + 0.5)


def test_gnn_uniform_runs_with_trailing_isolated_nodes():
    """Runs covering nodes 0..2 of 6: nodes 3, 4, 5 receive nothing (x' = U x)."""
    torch.manual_seed(8)
    layer = GatedGNNLayer(6, norm=None).to(DTYPE).eval()
    target = torch.arange(3).repeat_interleave(2)
    source = torch.tensor([0, 1, 5, 4, 2, 3])
    edge_index = torch.stack([source, target])
    x = torch.randn(6, 6, dtype=DTYPE)
    edge_attr = torch.randn(6, 6, dtype=DTYPE)
    out, _ = layer(x, edge_index, edge_attr, layout=GraphLayout(in_degree=2))
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    out_ref, _ = layer(x, edge_index[:, perm], edge_attr[perm])
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
