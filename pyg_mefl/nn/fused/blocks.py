"""The fast path of :class:`~pyg_mefl.nn.AUFeatureBlocks`."""
import torch
from torch import Tensor

from .activation import relu


def au_feature_blocks(blocks, tokens: Tensor, au_id: Tensor, batch: Tensor,
                      every_au: bool = False, by_face: bool = False) -> Tensor:
    r"""``blocks(tokens, au_id, batch)`` (an :class:`~pyg_mefl.nn.AUFeatureBlocks`), with every
    AU's block on every face in one product; in inference the bias joins the norm's fixed
    affine, applied in place.

    Args:
        every_au (bool): Every face holds every AU of the vocabulary in order (node
            :math:`b A + a`), as for a tokens tensor: the nodes' rows are then a transpose
            of the product's, and no index gather is needed. (default: :obj:`False`)
        by_face (bool): With ``every_au``, return the nodes as ``[G, A, D, C]`` (face, AU,
            token, channel), a strided view of the product instead of a copy in node rows.
            (default: :obj:`False`)
    """
    if by_face and not every_au:
        raise ValueError("AUFeatureBlocks: by_face=True needs every_au=True")
    num_faces, num_tokens, channels = tokens.shape
    # the stacked [A, C, C] weight read in place as the transposed operand; nodes then pick
    # their (face, AU) rows
    rows, weight = blocks.dropout(tokens).reshape(-1, channels), blocks.weight.view(-1, channels)
    inference = (not blocks.training and blocks.norm.track_running_stats
                 and not torch.is_grad_enabled())
    if inference:  # (X W^T + b) s + t = X W^T s + (b s + t): the bias joins the norm's fixed
        # per-(AU, channel) affine, applied in place in one pass, then the ReLU
        scale, shift = blocks.norm.inference_affine()
        out = torch.mm(rows, weight.t()).view(num_faces, num_tokens, blocks.num_aus, channels)
        torch.addcmul(torch.addcmul(shift, blocks.bias, scale), out, scale, out=out).relu_()
    else:
        out = torch.addmm(blocks.bias.view(-1), rows, weight.t())
        out = out.view(num_faces, num_tokens, blocks.num_aus, channels)
    if not every_au:
        out = out[batch, :, au_id]
        return out if inference else torch.relu_(blocks.norm(out, au_id))
    if blocks.training:  # rows (face, token) cycle through the AUs: fused norm (a ReLU out
        # of place: in place on the norm's view, autograd would copy the gradient around it;
        # and one whose gradient compiled code takes from its output, not a stored mask)
        out = relu(blocks.norm.cyclic(out.view(-1, blocks.num_aus, channels))).view_as(out)
    out = out.transpose(1, 2)                                           # [G, A, D, C]
    if not (inference or blocks.training):  # the norm module on the node rows
        out = torch.relu_(blocks.norm(out.reshape(-1, num_tokens, channels), au_id)).view_as(out)
    return out if by_face else out.reshape(-1, num_tokens, channels)
