"""The fast paths of ``AUFeatureBlocks`` (``pyg_mefl/nn/fused/blocks.py``) against its gather of
rows and its reference body (float64): the in-place inference norm and the transpose for faces
with every AU, as rows and by face, in training and in eval.
No timing here: see `python -m benchmarks head`.
"""
import pytest
import torch

from paths_helpers import DTYPE
from pyg_mefl import AUFeatureBlocks, GraphLayout
from pyg_mefl.nn import fused
from pyg_mefl.nn.fused.blocks import au_feature_blocks


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_au_blocks_fast_paths_match_the_gather(training):
    torch.manual_seed(13)
    num_faces, num_aus, tokens, channels = 3, 4, 5, 6
    blocks = AUFeatureBlocks(num_aus, channels).to(DTYPE).train(training)
    with torch.no_grad():
        blocks.norm.weight.uniform_(0.5, 1.5)
        blocks.norm.bias.normal_()
        blocks.norm.running_mean.normal_()
        blocks.norm.running_var.uniform_(0.5, 1.5)
    x = torch.randn(num_faces, tokens, channels, dtype=DTYPE)
    au_id = torch.arange(num_aus).repeat(num_faces)
    batch = torch.arange(num_faces).repeat_interleave(num_aus)
    state = {k: v.clone() for k, v in blocks.state_dict().items()}
    every_au = GraphLayout(num_aus, ids_in_order=True)
    gathered = blocks(x, au_id, batch)  # grad enabled: the norm module on gathered rows
    blocks.load_state_dict(state)
    with fused.reference_paths():
        torch.testing.assert_close(blocks(x, au_id, batch), gathered, rtol=1e-12, atol=1e-12)
    blocks.load_state_dict(state)
    transposed = blocks(x, au_id, batch, every_au)
    torch.testing.assert_close(transposed, gathered, rtol=1e-12, atol=1e-12)
    blocks.load_state_dict(state)
    by_face = au_feature_blocks(blocks, x, au_id, batch, every_au=True, by_face=True)
    assert by_face.shape == (num_faces, num_aus, tokens, channels)
    torch.testing.assert_close(by_face.reshape_as(gathered), gathered, rtol=1e-12, atol=1e-12)
    blocks.load_state_dict(state)
    with torch.no_grad():  # in eval: the norm in place on the product, before the rows' pick
        torch.testing.assert_close(blocks(x, au_id, batch, every_au), gathered,
                                   rtol=1e-12, atol=1e-12)
        by_face = au_feature_blocks(blocks, x, au_id, batch, every_au=True, by_face=True)
        assert by_face.transpose(1, 2).is_contiguous()  # a view of the product: no copy
        torch.testing.assert_close(by_face.reshape_as(gathered), gathered, rtol=1e-12,
                                   atol=1e-12)
        if not training:  # a subset of AUs of one face
            torch.testing.assert_close(blocks(x[1:], au_id[1:3], batch[:2]), gathered[5:7],
                                       rtol=1e-12, atol=1e-12)
