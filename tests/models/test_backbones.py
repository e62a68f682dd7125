"""Backbones of the published whole models (SPEC §10): torchvision ResNets and timm Swin, the
Microsoft Swin layout mapped onto timm's, and the backbone read off a file's keys."""
import pytest
import torch

from pyg_mefl.testing.published_models import (RESNET_WIDTH, SWIN, ReferenceTrunk,
                                               microsoft_swin_state, random_backbone_state,
                                               timm_swin, torchvision_resnet)
from pyg_mefl.models import ImageTokens, ResNetTokens, SwinTokens, build_backbone
from pyg_mefl.pretrained.backbone_layouts import backbone_channels, detect_backbone
from pyg_mefl.pretrained.swin import FIXED, swin_rules, swin_to_native, swin_to_published

MS_KEYS = {}  # Microsoft-layout state dicts of meta-device timm models, per Swin size


def _meta_microsoft_state(name):
    if name not in MS_KEYS:
        MS_KEYS[name] = (timm_swin(name, device="meta"),)
        MS_KEYS[name] += (microsoft_swin_state(MS_KEYS[name][0], name),)
    return MS_KEYS[name]


@pytest.mark.parametrize("name", list(SWIN))
def test_swin_table_maps_every_microsoft_key_onto_timm(name):
    model, microsoft = _meta_microsoft_state(name)
    rules = swin_rules(name)
    assert [published for _, published, _ in rules] == list(microsoft)  # Microsoft's order
    timm_state = model.state_dict()
    loaded = {native: published for native, published, how in rules if how != FIXED}
    assert set(loaded) == set(timm_state)
    for native, published in loaded.items():
        assert microsoft[published].shape == timm_state[native].shape, published
    checked = {native for native, _, how in rules if how == FIXED}
    assert checked == {name for name, _ in model.named_buffers()}
    # the patch merging moves from the end of stage i to the start of stage i + 1
    assert loaded["layers.1.downsample.reduction.weight"] == "layers.0.downsample.reduction.weight"
    assert "layers.3.downsample.norm.weight" in loaded and \
        "layers.3.downsample.norm.weight" not in microsoft
    assert detect_backbone(microsoft, "file") == name
    assert backbone_channels(name) == SWIN[name][1] * 8


@pytest.mark.parametrize("name", list(RESNET_WIDTH))
def test_resnet_detected_from_its_keys(name):
    state = torchvision_resnet(name, device="meta").state_dict()
    assert detect_backbone(state, "file") == name
    assert backbone_channels(name) == RESNET_WIDTH[name]


def test_unknown_backbones_are_named():
    state = dict(torchvision_resnet("resnet18", device="meta").state_dict())
    del state["layer3.1.conv1.weight"], state["layer3.1.bn1.weight"]
    state = {k: v for k, v in state.items() if not k.startswith("layer3.1.")}
    with pytest.raises(ValueError, match=r"ResNet backbone with \[2, 2, 1, 2\] basic blocks"):
        detect_backbone(state, "x.pth")
    with pytest.raises(KeyError, match=r"x.pth: cannot tell the backbone: no key "
                                       r"'backbone.conv1.weight'.*'backbone.patch_embed"):
        detect_backbone({"stem.weight": torch.zeros(1)}, "x.pth")


@pytest.fixture(scope="module")
def swin_tiny():
    """A random Swin-T in Microsoft's layout and our SwinTokens holding it."""
    state = random_backbone_state("swin_tiny", seed=3)
    ours = SwinTokens("swin_tiny")
    native = swin_to_native(state, "swin_tiny", dict(ours.named_buffers()),
                            {k: v.shape for k, v in ours.state_dict().items()}, "file")
    ours.load_state_dict(native, strict=True)
    return state, ours


def test_swin_tokens_match_timm_loading_the_microsoft_file(swin_tiny):
    state, ours = swin_tiny
    reference = ReferenceTrunk("swin_tiny", state).eval()  # timm's own checkpoint filter
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = ours.eval()(images)
        assert tokens.shape == (1, 49, 768)
        assert torch.equal(tokens, reference(images))
    with pytest.raises(ValueError, match="images: swin_tiny reads 224x224 images, got 256x224"):
        ours(torch.zeros(1, 3, 256, 224))


def test_swin_round_trip_is_bit_exact(swin_tiny):
    state, ours = swin_tiny
    saved = swin_to_published(ours.state_dict(), "swin_tiny", dict(ours.named_buffers()))
    assert list(saved) == list(state)
    for key, value in state.items():
        assert saved[key].dtype == value.dtype and torch.equal(saved[key], value), key


def test_swin_buffers_are_checked_not_dropped(swin_tiny):
    state, ours = swin_tiny
    buffers = dict(ours.named_buffers())
    expected = {k: v.shape for k, v in ours.state_dict().items()}
    tampered = dict(state)
    tampered["layers.1.blocks.1.attn_mask"] = tampered["layers.1.blocks.1.attn_mask"].clone()
    tampered["layers.1.blocks.1.attn_mask"][0, 0, 1] = -100.0
    with pytest.raises(ValueError, match=r"key 'layers.1.blocks.1.attn_mask' in the file: "
                                         r"differs from the swin_tiny buffer"):
        swin_to_native(tampered, "swin_tiny", buffers, expected, "file")
    missing = {k: v for k, v in state.items()
               if k != "layers.2.blocks.4.attn.relative_position_index"}
    with pytest.raises(KeyError, match="missing key 'layers.2.blocks.4.attn.relative_position_"):
        swin_to_native(missing, "swin_tiny", buffers, expected, "file")
    extra = dict(state, **{"layers.3.blocks.1.attn_mask": torch.zeros(1, 49, 49)})
    with pytest.raises(KeyError, match=r"unexpected key\(s\) in the file: "
                                       r"\['layers.3.blocks.1.attn_mask'\]"):
        swin_to_native(extra, "swin_tiny", buffers, expected, "file")


def test_resnet_tokens_are_the_layer4_map():
    state = random_backbone_state("resnet18", seed=4)
    ours = ResNetTokens("resnet18")
    ours.load_state_dict(state, strict=True)  # torchvision's names are the published ones
    reference = ReferenceTrunk("resnet18", state)
    images = torch.randn(2, 3, 97, 75, generator=torch.Generator().manual_seed(1))
    for training in (False, True):
        tokens, expected = ours.train(training)(images), reference.train(training)(images)
        assert tokens.shape == (2, 4 * 3, 512)
        assert torch.equal(tokens, expected)


def test_build_backbone_adds_the_global_linear_block():
    backbone = build_backbone("resnet18", 24)
    assert isinstance(backbone, ImageTokens) and backbone.global_linear.lin.in_features == 512
    assert backbone(torch.randn(2, 3, 64, 64)).shape == (2, 4, 24)
    with pytest.raises(ValueError, match=r"images: expected a tensor of shape \[B, 3, H, W\]"):
        backbone(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="backbone: expected one of"):
        build_backbone("resnet19", 24)
