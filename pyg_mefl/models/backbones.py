"""Backbones that turn face images into the token sets MEFL reads (SPEC §1)."""
from typing import Optional

from torch import Tensor
from torch.nn import BatchNorm2d, Conv2d, Module, ReLU, Sequential
from torch.nn.functional import adaptive_avg_pool2d

from ..nn.blocks import LinearBlock

BACKBONES = ("cnn", "resnet50")


class SmallCNN(Module):
    r"""A small pure-torch convolutional backbone for tests and CPU training: ``num_stages``
    stride-2 ``Conv3x3-BN-ReLU`` stages (widths doubling from ``width`` up to ``out_channels``),
    then an adaptive average pool to a ``grid x grid`` map read as ``grid**2`` tokens.

    Args:
        out_channels (int): Token width :math:`C`. (default: :obj:`64`)
        grid (int): Side of the token grid, :math:`D = \text{grid}^2`. (default: :obj:`4`)
        width (int): Channels of the first stage. (default: :obj:`16`)
        num_stages (int): Number of stride-2 stages. (default: :obj:`4`)

    Shapes:
        - **input:** images :math:`(B, 3, H, W)`
        - **output:** tokens :math:`(B, \text{grid}^2, C)`
    """

    def __init__(self, out_channels: int = 64, grid: int = 4, width: int = 16,
                 num_stages: int = 4):
        super().__init__()
        for name, value in (("out_channels", out_channels), ("grid", grid), ("width", width),
                            ("num_stages", num_stages)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        self.out_channels = out_channels
        self.grid = grid
        layers, channels = [], 3
        for stage in range(num_stages):
            out = out_channels if stage == num_stages - 1 else min(width * 2 ** stage, out_channels)
            layers += [Conv2d(channels, out, 3, stride=2, padding=1, bias=False), BatchNorm2d(out),
                       ReLU(inplace=True)]
            channels = out
        self.features = Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"images: expected shape [B, 3, H, W], got {list(images.shape)}")
        maps = adaptive_avg_pool2d(self.features(images), self.grid)
        return maps.flatten(2).transpose(1, 2)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.out_channels}, grid={self.grid})"


def _torchvision():
    try:
        import torchvision
    except ImportError as error:
        raise ModuleNotFoundError(
            "backbone 'resnet50' needs torchvision, an optional extra of pyg_mefl: "
            "pip install pyg_mefl[vision]", name="torchvision") from error
    return torchvision


class ResNet50Tokens(Module):
    r"""torchvision's ResNet-50 trunk (up to ``layer4``) followed by the published global linear
    block: a 224x224 face gives a 7x7 map of 2048 channels, read as 49 tokens and mapped to
    :math:`C` by :class:`LinearBlock` ``(2048, C)`` (SPEC §1). Needs the ``vision`` extra
    (``pip install pyg_mefl[vision]``).

    Args:
        out_channels (int): Token width :math:`C`. (default: :obj:`512`)
        weights (str, optional): torchvision weights of the trunk, e.g. ``"IMAGENET1K_V1"``
            (downloaded or read from the torch hub cache); :obj:`None` for a random init.

    Shapes:
        - **input:** images :math:`(B, 3, H, W)`
        - **output:** tokens :math:`(B, HW/1024, C)`
    """

    def __init__(self, out_channels: int = 512, weights: Optional[str] = None):
        super().__init__()
        resnet = _torchvision().models.resnet50(weights=weights)
        self.out_channels = out_channels
        self.trunk = Sequential(*list(resnet.children())[:-2])  # drop the pool and classifier
        self.global_linear = LinearBlock(2048, out_channels)

    def forward(self, images: Tensor) -> Tensor:
        return self.global_linear(self.trunk(images).flatten(2).transpose(1, 2))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.out_channels})"


def build_backbone(name: str, out_channels: int, **kwargs) -> Module:
    """The backbone called ``name`` (``"cnn"``: :class:`SmallCNN`, ``"resnet50"``:
    :class:`ResNet50Tokens`) with tokens of width ``out_channels``; ``kwargs`` go to its class."""
    if name == "cnn":
        return SmallCNN(out_channels, **kwargs)
    if name == "resnet50":
        return ResNet50Tokens(out_channels, **kwargs)
    raise ValueError(f"backbone: expected one of {BACKBONES}, got {name!r}")

