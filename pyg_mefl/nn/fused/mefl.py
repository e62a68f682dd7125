"""The fast path of :class:`~pyg_mefl.nn.MEFL`: its parts' fast paths, joined where one part's
output feeds the next more cheaply in another form."""
from typing import Tuple

from torch import Tensor

from ...data.graph import GraphLayout, edge_slots
from .blocks import au_feature_blocks
from .gem import graph_edge_model, uses_face_basis
from .gnn import gated_gnn_layer


def mefl_nodes_and_edges(model, tokens: Tensor, au_id: Tensor, edge_index: Tensor,
                         batch: Tensor, layout: GraphLayout) -> Tuple[Tensor, Tensor]:
    r"""The final node and edge features of ``model``'s graph (before the heads).

    Where every face holds every AU in order (a tokens tensor, or face graphs that say so), the
    AU blocks give ``[G, N, D, C]`` node tokens as a view of their product (no copy in node
    rows), and in the faces' token basis the GEM hands the first GNN layer its
    :math:`\mathbf{E}\mathbf{e}_{j \to i}` in factored form (one product per face instead of one
    per edge)."""
    dense = layout.ids_in_order and layout.nodes_per_graph == model.num_main_aus
    node_tokens = au_feature_blocks(model.afg, tokens, au_id, batch, every_au=dense, by_face=dense)
    edge_slot = edge_slots(edge_index, au_id, model.num_main_aus)
    layers = model.gnn.layers
    edge_proj = None
    if uses_face_basis(model.gem, tokens, layout):
        edge_attr, edge_proj = graph_edge_model(model.gem, tokens, node_tokens, edge_index, batch,
                                                edge_slot, layout, project=layers[0].lin_e.weight)
    else:
        edge_attr = graph_edge_model(model.gem, tokens, node_tokens, edge_index, batch, edge_slot,
                                     layout)
    # the mean over the token axis as a sum, then a division of the [nodes, C] result: a sum's
    # gradient is a broadcast that autograd adds to the GEM's (a mean's would be divided into a
    # new [nodes, D, C] tensor first); dense: in the product's layout
    num_tokens = node_tokens.size(-2)
    node_x = node_tokens.transpose(1, 2).sum(dim=1).view(-1, node_tokens.size(-1)) if dense \
        else node_tokens.sum(dim=1)
    node_x = node_x / num_tokens
    del node_tokens  # [nodes, D, C]: let inference free it before the GNN's edge tensors
    for layer in layers:
        node_x, edge_attr = gated_gnn_layer(layer, node_x, edge_index, edge_attr, au_id,
                                            edge_slot, layout, edge_proj)
        edge_proj = None  # the first layer's E e only
    return node_x, edge_attr
