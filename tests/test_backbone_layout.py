"""Property tests for the layout code: NHWC and token sequences (any prefix count) -> NCHW."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featinv.errors import FeatinvError
from featinv.features.backbone import Layout, ModelKnowledge, pool_features, resolve_layout, to_nchw

dims = st.integers(min_value=1, max_value=6)


def reference(batch: int, channels: int, h: int, w: int) -> torch.Tensor:
    """An NCHW map whose every entry is distinct, so any mix-up of axes shows."""
    return torch.arange(batch * channels * h * w, dtype=torch.float32).reshape(batch, channels, h, w)


@settings(max_examples=60, deadline=None)
@given(batch=dims, channels=st.integers(1, 40), h=dims, w=dims, stride=st.sampled_from([1, 2, 4, 14, 16, 32]))
def test_nchw_and_nhwc_round_trip(batch: int, channels: int, h: int, w: int, stride: int) -> None:
    fmap = reference(batch, channels, h, w)
    input_hw = (h * stride, w * stride)
    nchw = resolve_layout(fmap.shape, input_hw, ModelKnowledge(), "stages.3", batch)
    assert nchw == Layout("NCHW", (h, w))  # the declared format wins whenever its grid is possible
    assert torch.equal(to_nchw(fmap, Layout("NCHW", (h, w))), fmap)
    nhwc = fmap.permute(0, 2, 3, 1).contiguous()
    layout = resolve_layout(nhwc.shape, input_hw, ModelKnowledge(channels_last=lambda path: True), "layers.3", batch)
    assert layout == Layout("NHWC", (h, w))
    assert torch.equal(to_nchw(nhwc, layout), fmap)


@settings(max_examples=60, deadline=None)
@given(batch=dims, channels=st.integers(1, 40), h=dims, w=dims, prefix=st.integers(0, 8),
       patch=st.sampled_from([8, 14, 16]))
def test_tokens_with_any_prefix_round_trip(batch: int, channels: int, h: int, w: int, prefix: int, patch: int) -> None:
    fmap = reference(batch, channels, h, w)
    patches = fmap.flatten(2).transpose(1, 2)  # row-major patch order, as conv patch embeddings produce
    tokens = torch.cat([torch.full((batch, prefix, channels), -1.0), patches], dim=1)
    knowledge = ModelKnowledge(prefix_tokens=prefix, patch_grid=lambda hw: (hw[0] // patch, hw[1] // patch))
    layout = resolve_layout(tokens.shape, (h * patch, w * patch), knowledge, "blocks.0", batch)
    assert layout == Layout("tokens", (h, w), prefix)
    assert torch.equal(to_nchw(tokens, layout), fmap)
    if prefix:  # a wrong prefix count never silently shifts the grid
        wrong = ModelKnowledge(prefix_tokens=prefix - 1, patch_grid=knowledge.patch_grid)
        with pytest.raises(FeatinvError, match="tokens"):
            resolve_layout(tokens.shape, (h * patch, w * patch), wrong, "blocks.0", batch)


@settings(max_examples=30, deadline=None)
@given(batch=dims, channels=st.integers(1, 12), h=dims, w=dims)
def test_pool_features_broadcasts_the_mean(batch: int, channels: int, h: int, w: int) -> None:
    fmap = reference(batch, channels, h, w)
    pooled = pool_features(fmap)
    assert pooled.shape == fmap.shape and pooled.is_contiguous()
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3), keepdim=True).expand_as(fmap))


def test_channels_last_inside_a_cnn_block_is_recognised_by_shape() -> None:
    """ConvNeXt's MLP runs channels-last inside an NCHW model: [B, 7, 7, 3072] is no 7x3072 grid."""
    layout = resolve_layout((2, 7, 7, 3072), (224, 224), ModelKnowledge(), "stages.3.blocks.0.mlp.fc1", 2)
    assert layout == Layout("NHWC", (7, 7))


@pytest.mark.parametrize(("shape", "match"), [
    ((2, 1000), "no spatial grid"),
    ((8, 49, 96), "not the batch"),
    ((2, 5, 7, 3), "no downsampled grid"),
])
def test_outputs_without_a_grid_are_refused(shape: tuple[int, ...], match: str) -> None:
    knowledge = ModelKnowledge(patch_grid=lambda hw: (hw[0] // 16, hw[1] // 16))
    with pytest.raises(FeatinvError, match=match):
        resolve_layout(shape, (224, 224), knowledge, "x", 2)
