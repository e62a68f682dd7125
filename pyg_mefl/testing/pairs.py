"""A pyg_mefl model and the dense reference of SPEC.md holding the same weights."""
import torch

from .dense_reference import DenseMEFL
from ..nn import MEFL
from ..pretrained import HeadConfig, to_native


def randomize_batchnorms(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Random affine parameters and running statistics, so that every slot differs."""
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator) * 0.3)
                bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator) * 0.3)
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator) + 0.5)


def copy_into(model: MEFL, dense: DenseMEFL) -> MEFL:
    """Load the dense reference's weights (mexca names) into ``model`` through the rename table."""
    config = HeadConfig(model.in_channels, model.num_main_aus, model.num_sub_aus,
                        len(model.gnn.layers), model.edge_head is not None, model.residual)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(to_native(dense.state_dict(), "mexca", config, expected), strict=True)
    return model


def make_pair(channels, num_aus, num_sub=0, residual="post", edge_head=False, seed=0,
              dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dense = DenseMEFL(channels, num_aus, num_sub, residual=residual, edge_head=edge_head)
    randomize_batchnorms(dense, generator)
    model = MEFL(channels, num_aus, num_sub, residual=residual, edge_head=edge_head)
    copy_into(model, dense)
    return dense.to(dtype), model.to(dtype)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|`` (0 for two zero tensors)."""
    actual, expected = actual.detach(), expected.detach()
    scale = expected.abs().max().clamp(min=1e-30)
    return float((actual - expected).abs().max() / scale)
