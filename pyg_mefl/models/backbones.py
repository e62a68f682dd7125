"""Backbones that turn face images into the token sets MEFL reads (docs/math.md §1, §10): a small
CNN, and torchvision's ResNets and timm's Swin Transformers behind the published global linear
block."""
from typing import Optional

from torch import Tensor
from torch.nn import BatchNorm2d, Conv2d, Module, ReLU, Sequential
from torch.nn.functional import adaptive_avg_pool2d

from ..nn.blocks import LinearBlock
from ..pretrained.backbone_layouts import (BACKBONE_NAMES, RESNET_BLOCKS, backbone_channels,
                                           check_backbone_name)
from ..pretrained.swin import IMAGE_SIZE, TIMM_NAMES

BACKBONES = ("cnn",) + BACKBONE_NAMES


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
        self.width, self.num_stages = width, num_stages
        layers, channels = [], 3
        for stage in range(num_stages):
            out = out_channels if stage == num_stages - 1 else min(width * 2 ** stage, out_channels)
            layers += [Conv2d(channels, out, 3, stride=2, padding=1, bias=False), BatchNorm2d(out),
                       ReLU(inplace=True)]
            channels = out
        self.features = Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        maps = adaptive_avg_pool2d(self.features(images), self.grid)
        return maps.flatten(2).transpose(1, 2)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.out_channels}, grid={self.grid})"


def _vision(module: str, backbone: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise ModuleNotFoundError(
            f"backbone {backbone!r} needs {module}, an optional extra of pyg_mefl: "
            "pip install pyg_mefl[vision]", name=module) from error


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.size(1) != 3:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor of shape [B, 3, H, W], got {shape}")


class ResNetTokens(Module):
    r"""torchvision's ResNet up to ``layer4``, its last map read as tokens: a 224x224 face gives
    :math:`7 \times 7 = 49` tokens of 2048 channels (512 for ResNet-18/34), as the published
    MEFARG models read them (docs/math.md §10). The modules keep torchvision's names, which are the
    published checkpoints' (``conv1``, ``bn1``, ``layer1`` ... ``layer4``). Needs the ``vision``
    extra.

    Args:
        name (str): ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or
            ``"resnet152"``. (default: :obj:`"resnet50"`)
        weights (str, optional): torchvision weights, e.g. ``"IMAGENET1K_V1"`` (downloaded or
            read from the torch hub cache); :obj:`None` for a random init.

    Shapes:
        - **input:** images :math:`(B, 3, H, W)`
        - **output:** tokens :math:`(B, \lceil H/32 \rceil \lceil W/32 \rceil, C_{backbone})`
    """
    _TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, name: str = "resnet50", weights: Optional[str] = None):
        super().__init__()
        if name not in RESNET_BLOCKS:
            raise ValueError(f"name: expected one of {tuple(RESNET_BLOCKS)}, got {name!r}")
        resnet = getattr(_vision("torchvision", name).models, name)(weights=weights)
        for part in self._TRUNK:  # everything but the pool and the classifier
            self.add_module(part, getattr(resnet, part))
        self.name = name
        self.out_channels = backbone_channels(name)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        x = images
        for part in self._TRUNK:
            x = getattr(self, part)(x)
        return x.flatten(2).transpose(1, 2)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r})"


class SwinTokens(Module):
    r"""timm's Swin Transformer (patch 4, window 7, 224 px) without its classifier, the final
    :math:`7 \times 7` map read as 49 tokens of :math:`8 E` channels (768 for Swin-T/S, 1024 for
    Swin-B), as the published MEFARG models read them (docs/math.md §10). The modules keep timm's
    names (``patch_embed``, ``layers``, ``norm``); :mod:`pyg_mefl.pretrained.swin` maps Microsoft's
    original checkpoints onto them. Needs the ``vision`` extra.

    Args:
        name (str): ``"swin_tiny"``, ``"swin_small"`` or ``"swin_base"``.
            (default: :obj:`"swin_tiny"`)
        pretrained (bool): Start from timm's ImageNet weights (downloaded or read from the
            Hugging Face cache). (default: :obj:`False`)

    Shapes:
        - **input:** images :math:`(B, 3, 224, 224)`
        - **output:** tokens :math:`(B, 49, C_{backbone})`
    """

    def __init__(self, name: str = "swin_tiny", pretrained: bool = False):
        super().__init__()
        if name not in TIMM_NAMES:
            raise ValueError(f"name: expected one of {tuple(TIMM_NAMES)}, got {name!r}")
        swin = _vision("timm", name).create_model(TIMM_NAMES[name], pretrained=pretrained,
                                                  num_classes=0)
        # timm's forward_features: patch embedding, stages, final norm (NHWC)
        self.patch_embed, self.layers, self.norm = swin.patch_embed, swin.layers, swin.norm
        self.name = name
        self.out_channels = backbone_channels(name)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):  # the windows tile a 224-px face
            raise ValueError(f"images: {self.name} reads {IMAGE_SIZE}x{IMAGE_SIZE} images, got "
                             f"{images.size(-2)}x{images.size(-1)}")
        return self.norm(self.layers(self.patch_embed(images))).flatten(1, 2)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r})"


class ImageTokens(Module):
    r"""A backbone's tokens mapped to the head width :math:`C` by the published global linear
    block, :math:`\mathrm{LinearBlock}(C_{backbone}, C)` (``global_linear`` / mexca
    ``linear_global``): the part of a published MEFARG model before its AU head.

    Args:
        trunk (torch.nn.Module): Images to tokens :math:`(B, D, C_{backbone})`, with an
            ``out_channels`` attribute, e.g. :class:`ResNetTokens` or :class:`SwinTokens`.
        out_channels (int): Head width :math:`C`.

    Shapes:
        - **input:** images :math:`(B, 3, H, W)`
        - **output:** tokens :math:`(B, D, C)`
    """

    def __init__(self, trunk: Module, out_channels: int):
        super().__init__()
        self.trunk = trunk
        self.global_linear = LinearBlock(trunk.out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> Tensor:
        return self.global_linear(self.trunk(images))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.trunk!r}, {self.out_channels})"


class ResNet50Tokens(ImageTokens):
    r""":class:`ImageTokens` of torchvision's ResNet-50 (:class:`ResNetTokens`): a 224x224 face
    gives 49 tokens of width :math:`C`. Needs the ``vision`` extra.

    Args:
        out_channels (int): Token width :math:`C`. (default: :obj:`512`)
        weights (str, optional): torchvision weights of the trunk, e.g. ``"IMAGENET1K_V1"``;
            :obj:`None` for a random init.
    """

    def __init__(self, out_channels: int = 512, weights: Optional[str] = None):
        super().__init__(ResNetTokens("resnet50", weights), out_channels)


def build_backbone(name: str, out_channels: int, **kwargs) -> Module:
    """The backbone called ``name`` with tokens of width ``out_channels``: ``"cnn"``:
    :class:`SmallCNN`; a ResNet (``"resnet50"`` ...) or Swin (``"swin_tiny"`` ...):
    :class:`ImageTokens` of :class:`ResNetTokens` / :class:`SwinTokens`. ``kwargs`` go to the
    backbone's class (``weights`` for ResNets, ``pretrained`` for Swin)."""
    if name == "cnn":
        return SmallCNN(out_channels, **kwargs)
    if name not in BACKBONES:
        raise ValueError(f"backbone: expected one of {BACKBONES}, got {name!r}")
    return ImageTokens(build_trunk(name, **kwargs), out_channels)


def build_trunk(name: str, **kwargs) -> Module:
    """:class:`ResNetTokens` or :class:`SwinTokens` called ``name``."""
    trunk = ResNetTokens if check_backbone_name(name) in RESNET_BLOCKS else SwinTokens
    return trunk(name, **kwargs)
