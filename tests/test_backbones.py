"""Backbones: NCHW feature maps from any layer of timm / torchvision models (random init, small inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import featinv
from featinv.errors import FeatinvError
from featinv.features.backbone import Backbone, pool_features

# spec, layer, input size, expected (C, h, w), how the layer emits it
CASES = [
    ("timm:convnext_atto", "stages.3", 128, (320, 4, 4)),                         # NCHW CNN
    ("timm:swinv2_tiny_window8_256", "layers.3", 64, (768, 2, 2)),                # NHWC stages
    ("timm:swinv2_cr_tiny_ns_224", "stages.3", 64, (768, 2, 2)),                  # NCHW stages, NHWC blocks
    ("timm:vit_tiny_patch16_224", "blocks.11", 64, (192, 4, 4)),                  # tokens + class token
    ("timm:deit_tiny_distilled_patch16_224", "blocks.11", 64, (192, 4, 4)),       # class + distillation token
    ("timm:vit_small_patch14_reg4_dinov2", "blocks.11", 56, (384, 4, 4)),         # class + 4 register tokens
    ("torchvision:resnet50", "layer4", 256, (2048, 8, 8)),                       # NCHW CNN
    ("torchvision:swin_t", "features.7", 128, (768, 4, 4)),                       # NHWC stages
    ("torchvision:vit_b_16", "encoder.layers.encoder_layer_11", 64, (768, 4, 4)),  # tokens + class token
]
IDS = [f"{spec}:{layer}" for spec, layer, _, _ in CASES]

_CACHE: dict[tuple[str, str, int], Backbone] = {}


def make(spec: str, layer: str | None, size: int) -> Backbone:
    """Each model is built once per test session (random init is seeded, so rebuilding gives the same)."""
    key = (spec, str(layer), size)
    if key not in _CACHE:
        _CACHE[key] = featinv.backbone(spec, layer=layer, weights="none", input_size=size)
    return _CACHE[key]


def quadrant_change(backbone: Backbone, size: int, quadrant: str) -> list[float]:
    """Mean |feature change| per grid quadrant (TL, TR, BL, BR) when only one input quadrant changes."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=g)
    y = x.clone()
    half = size // 2
    rows = slice(0, half) if quadrant[0] == "T" else slice(half, size)
    cols = slice(0, half) if quadrant[1] == "L" else slice(half, size)
    y[..., rows, cols] = torch.rand(1, 3, half, half, generator=g)
    with torch.no_grad():
        diff = (backbone.features(backbone.normalize(y)) - backbone.features(backbone.normalize(x))).abs().mean(1)[0]
    h2, w2 = diff.shape[0] // 2, diff.shape[1] // 2
    return [float(diff[:h2, :w2].mean()), float(diff[:h2, w2:].mean()),
            float(diff[h2:, :w2].mean()), float(diff[h2:, w2:].mean())]


@pytest.mark.parametrize(("spec", "layer", "size", "shape"), CASES, ids=IDS)
def test_features_are_nchw_with_the_right_shape(spec: str, layer: str, size: int, shape: tuple[int, int, int]) -> None:
    backbone = make(spec, layer, size)
    x = backbone.normalize(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)))
    fmap = backbone.features(x)
    assert fmap.dtype == torch.float32 and fmap.is_contiguous()
    assert tuple(fmap.shape) == (2, *shape)
    info = backbone.info
    assert (info.channels, *info.grid) == shape
    assert info.input_size == (size, size) and info.stride == round(size / shape[1]) and info.layer == layer
    assert info.spec == spec and info.num_classes == backbone.logits(x).shape[-1]


@pytest.mark.parametrize(("spec", "layer", "size", "shape"), CASES, ids=IDS)
def test_locality_proves_row_and_column_order(spec: str, layer: str, size: int, shape: tuple[int, int, int]) -> None:
    """Changing one input quarter changes that quarter of the map most.

    Top-left (the issue's test) plus top-right: a transposed grid keeps the top-left quadrant in place
    but would move a top-right change to the bottom-left, so both together pin rows *and* columns.
    Random-init transformers still show it at their last block: the residual stream carries each
    token's own input much more strongly than attention mixes in others.
    """
    backbone = make(spec, layer, size)
    tl = quadrant_change(backbone, size, "TL")
    assert tl[0] == max(tl) and tl[0] > tl[3], tl
    tr = quadrant_change(backbone, size, "TR")
    assert tr[1] == max(tr) and tr[1] > tr[2], tr


def test_pooled_is_the_mean_broadcast_to_every_position() -> None:
    backbone = make("timm:convnext_atto", "stages.3", 128)
    x = backbone.normalize(torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)))
    fmap = backbone.features(x)
    pooled = backbone.features(x, pooled=True)
    assert pooled.shape == fmap.shape
    torch.testing.assert_close(pooled, pool_features(fmap))
    torch.testing.assert_close(pooled[:, :, 0, 0], fmap.mean(dim=(2, 3)))
    assert torch.equal(pooled[:, :, 0, 0], pooled[:, :, -1, -1])
    assert featinv.pool_features is pool_features


def test_stop_early_runs_nothing_after_the_layer() -> None:
    """features() leaves the forward pass after the layer: later stages and the head are never called."""
    backbone = make("timm:convnext_atto", "stages.1", 128)
    calls: dict[str, int] = {}
    handles = [module.register_forward_hook(lambda m, i, o, p=path: calls.__setitem__(p, calls.get(p, 0) + 1))
               for path, module in backbone.model.named_modules() if path]
    try:
        x = torch.zeros(1, 3, 128, 128)
        backbone.features(x)
        assert calls.get("stages.1") == 1 and calls.get("stem") == 1
        assert not [p for p in calls if p.startswith(("stages.2", "stages.3", "head"))]
        calls.clear()
        backbone.logits(x)
        assert calls.get("stages.3") == 1 and calls.get("head.fc") == 1
    finally:
        for handle in handles:
            handle.remove()
    # the capture hooks are gone again after every call
    assert all(not module._forward_hooks for module in backbone.model.modules())


def test_features_and_logits_match_the_separate_calls() -> None:
    backbone = make("timm:vit_tiny_patch16_224", "blocks.11", 64)
    x = backbone.normalize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    fmap, logits = backbone.features_and_logits(x, pooled=True)
    torch.testing.assert_close(fmap, backbone.features(x, pooled=True))
    torch.testing.assert_close(logits, backbone.logits(x))
    assert logits.shape == (2, 1000)


def test_preprocess_pil_and_tensor_agree_and_use_the_model_config() -> None:
    backbone = make("timm:convnext_atto", "stages.3", 128)
    prep = backbone.preprocessing
    assert prep.input_size == (128, 128) and prep.interpolation == "bicubic"  # convnext's own data config
    rng = torch.Generator().manual_seed(4)
    image01 = torch.rand(3, 96, 160, generator=rng)  # wide: the central square is kept
    pil = Image.fromarray((image01.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    from_pil = backbone.preprocess(pil)
    from_tensor = backbone.preprocess(torch.from_numpy(np.array(pil)).permute(2, 0, 1) / 255.0)
    assert from_pil.shape == (1, 3, 128, 128)
    torch.testing.assert_close(from_pil, from_tensor)
    assert backbone.preprocess([pil, pil]).shape == (2, 3, 128, 128)
    square = image01[:, :, 32:128]
    torch.testing.assert_close(backbone.preprocess(square[None]), backbone.normalize(square[None]))
    with pytest.raises(FeatinvError, match="0, 1"):
        backbone.preprocess(image01 * 255)


def test_normalize_is_differentiable() -> None:
    backbone = make("timm:convnext_atto", "stages.3", 128)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    backbone.features(backbone.normalize(images)).square().mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in backbone.model.parameters()) and not backbone.model.training


def test_torchvision_preprocessing_comes_from_the_weights_transforms() -> None:
    backbone = make("torchvision:swin_t", "features.7", 128)
    assert backbone.preprocessing.interpolation == "bicubic"  # swin_t's IMAGENET1K_V1 transforms
    assert backbone.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.parametrize(("spec", "layer", "size", "default"), [
    ("timm:convnext_atto", "stages.3", 128, "stages.3"),
    ("timm:vit_tiny_patch16_224", "blocks.11", 64, "norm"),
    ("timm:swinv2_tiny_window8_256", "layers.3", 64, "norm"),
    ("torchvision:resnet50", "layer4", 256, "layer4"),
    ("torchvision:swin_t", "features.7", 128, "norm"),
    ("torchvision:vit_b_16", "encoder.layers.encoder_layer_11", 64, "encoder"),
])
def test_default_layer_is_the_last_map_before_pooling(spec: str, layer: str, size: int, default: str) -> None:
    """The module whose output the model pools (final norms included, pass-through/permute skipped)."""
    assert make(spec, layer, size).default_layer == default


def test_no_layer_means_the_default_layer() -> None:
    backbone = make("timm:convnext_atto", None, 64)
    assert backbone.layer == backbone.default_layer == "stages.3"
    assert (backbone.info.channels, *backbone.info.grid) == (320, 2, 2)


def test_unknown_layer_names_the_closest_and_the_layers_command() -> None:
    with pytest.raises(FeatinvError, match=r"no layer 'stage\.3'; closest: stages\.3.*`featinv layers timm:convnext_atto`"):
        featinv.backbone("timm:convnext_atto", layer="stage.3", weights="none", input_size=64)


@pytest.mark.parametrize("layer", ["head.fc", "stages.3.blocks.0.conv_dw.weight"])
def test_layers_without_a_grid_are_refused(layer: str) -> None:
    with pytest.raises(FeatinvError, match="featinv layers"):
        featinv.backbone("timm:convnext_atto", layer=layer, weights="none", input_size=64)


def test_swin_window_attention_has_no_grid() -> None:
    with pytest.raises(FeatinvError, match="not the batch|no spatial grid|tokens"):
        featinv.backbone("timm:swinv2_tiny_window8_256", layer="layers.0.blocks.0.attn", weights="none",
                         input_size=64)


@pytest.mark.parametrize("spec", ["timm:convnxt_atto", "torchvision:resnet5O"])
def test_unknown_models_get_suggestions(spec: str) -> None:
    with pytest.raises(FeatinvError, match="did you mean"):
        featinv.backbone(spec, weights="none")


def test_unknown_prefix_is_a_clear_error() -> None:
    with pytest.raises(FeatinvError, match="unknown backbone"):
        featinv.backbone("timmm:convnext_atto", weights="none")


def test_layers_lists_every_module_with_shapes_and_the_default() -> None:
    backbone = make("timm:convnext_atto", None, 64)
    layers = {info.path: info for info in backbone.layers()}
    assert set(layers) == {p for p, _ in backbone.model.named_modules() if p}
    assert [p for p, info in layers.items() if info.is_default] == ["stages.3"]
    assert layers["stages.1"].shape == (80, 8, 8) and layers["stages.1"].stride == 8
    assert layers["head.fc"].shape is None and "no grid" in layers["head.fc"].layout
    swin = {info.path: info for info in make("timm:swinv2_tiny_window8_256", None, 64).layers()}
    assert swin["layers.2"].shape == (384, 4, 4) and swin["layers.2"].layout == "NHWC"
    deit = {info.path: info for info in make("timm:deit_tiny_distilled_patch16_224", "blocks.11", 64).layers()}
    assert deit["blocks.3"].shape == (192, 4, 4) and deit["blocks.3"].layout == "tokens+2"
    assert all(not m._forward_hooks for m in backbone.model.modules())


def test_random_init_is_reproducible_and_to_moves_the_device() -> None:
    a = featinv.backbone("timm:convnext_atto", layer="stages.2", weights="none", input_size=64)
    b = featinv.backbone("timm:convnext_atto", layer="stages.2", weights="none", input_size=64)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a.features(x), b.features(x))
    assert a.to("cpu") is a and a.device == torch.device("cpu")
    assert a.weights == "none"
