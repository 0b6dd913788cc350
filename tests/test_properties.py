"""Property tests (hypothesis): the Backbone's layout handling end to end, and the decomposers' exact sum.

``test_backbone_layout.py`` checks ``resolve_layout``/``to_nchw`` on raw shapes; here whole :class:`Backbone`
objects wrap small synthetic classifiers whose layer emits NCHW, NHWC (Swin-like stages) or token
sequences with prefix tokens (ViT-like), at random sizes, and the hooked features must equal the map
computed by hand. The decomposers must split any feature map into parts that sum back to it, whatever
the method, concept count, channel count, map size or value range.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from featinv.errors import FeatinvError
from featinv.features.backbone import Backbone, ModelKnowledge, Preprocessing

FAST = settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_thread")


class Synthetic(nn.Module):
    """Patch embedding -> one "stage" (a per-position linear map) -> mean pool -> linear head.

    ``kind`` fixes what the stage emits: "NCHW" (a 1x1 conv), "NHWC" (a Linear on channels-last
    positions) or "tokens" (a Linear on ``prefix`` extra tokens + row-major patch tokens).
    """

    def __init__(self, kind: str, channels: int, patch: int, prefix: int = 0, classes: int = 7) -> None:
        super().__init__()
        self.kind, self.prefix = kind, prefix
        self.embed = nn.Conv2d(3, channels, patch, stride=patch)
        self.stage = nn.Conv2d(channels, channels, 1) if kind == "NCHW" else nn.Linear(channels, channels)
        self.cls = nn.Parameter(torch.randn(1, max(prefix, 1), channels))
        self.head = nn.Linear(channels, classes)

    def grid_map(self, x: torch.Tensor) -> torch.Tensor:
        """What the stage computes, as NCHW, written without hooks: the expected feature map."""
        fmap = self.embed(x)
        if isinstance(self.stage, nn.Conv2d):
            return self.stage(fmap)
        return torch.einsum("oc,bchw->bohw", self.stage.weight, fmap) + self.stage.bias[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.embed(x)
        if self.kind == "NCHW":
            pooled = self.stage(fmap).mean((2, 3))
        elif self.kind == "NHWC":
            pooled = self.stage(fmap.permute(0, 2, 3, 1)).mean((1, 2))
        else:
            tokens = fmap.flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls[:, : self.prefix].expand(len(x), -1, -1), tokens], dim=1)
            pooled = self.stage(tokens)[:, self.prefix:].mean(1)
        return self.head(pooled)


@FAST
@given(kind=st.sampled_from(["NCHW", "NHWC", "tokens"]), batch=st.integers(1, 3), channels=st.integers(1, 9),
       h=st.integers(1, 5), w=st.integers(1, 5), patch=st.sampled_from([1, 2, 4, 8]), prefix=st.integers(0, 3),
       seed=st.integers(0, 2**16))
def test_backbone_features_equal_the_hand_computed_map(kind, batch, channels, h, w, patch, prefix, seed):
    torch.manual_seed(seed)
    model = Synthetic(kind, channels, patch, prefix if kind == "tokens" else 0)
    knowledge = ModelKnowledge(
        prefix_tokens=prefix if kind == "tokens" else 0,
        patch_grid=(lambda hw: (hw[0] // patch, hw[1] // patch)) if kind == "tokens" else None,
        channels_last=lambda path: kind == "NHWC" and path == "stage",
    )
    bb = Backbone(f"synthetic:{kind}", model, "stage", Preprocessing((h * patch, w * patch)), knowledge,
                  weights="none")
    assert (bb.info.channels, bb.info.grid, bb.info.stride, bb.info.num_classes) == (channels, (h, w), patch, 7)
    x = torch.randn(batch, 3, h * patch, w * patch)
    with torch.no_grad():
        expected = model.grid_map(x)
        features = bb.features(x)
        both, logits = bb.features_and_logits(x, pooled=True)
        pooled = bb.features(x, pooled=True)
    assert features.shape == (batch, channels, h, w) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected.mean((2, 3), keepdim=True).expand_as(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both, pooled)
    torch.testing.assert_close(logits, model(x))
    listed = {info.path: info for info in bb.layers()}
    assert listed["stage"].shape == (channels, h, w) and listed["stage"].stride == patch
    assert listed["head"].shape is None  # logits have no grid


@FAST
@given(channels=st.integers(1, 6), size=st.integers(4, 16), seed=st.integers(0, 2**16))
def test_a_layer_without_grid_is_refused_whatever_its_size(channels, size, seed):
    torch.manual_seed(seed)
    model = Synthetic("NCHW", channels, 2)
    with pytest.raises(FeatinvError, match="no spatial grid"):
        Backbone("synthetic:NCHW", model, "head", Preprocessing((size, size)), weights="none")


# ------------------------------------------------------------------------------------ decomposers

METHOD_OPTIONS = {
    "mcd": {"clustering": "kmeans"},
    "nmf": {"max_iter": 25},
    "sae": {"steps": 25, "batch_size": 32},
}
_FITTED: dict[tuple, object] = {}


def _fitted(method: str, k: int, channels: int, nonnegative: bool, seed: int):
    """Decomposers fitted on random vectors, cached (fitting is not the property under test)."""
    key = (method, k, channels, nonnegative, seed)
    if key not in _FITTED:
        from featinv.registry import create_decomposer

        vectors = torch.randn(48, channels, generator=torch.Generator().manual_seed(seed))
        if nonnegative:
            vectors = vectors.abs()
        decomposer = create_decomposer(method, n_concepts=k, seed=seed, **METHOD_OPTIONS[method])
        decomposer.progress = False
        weight = torch.randn(channels, generator=torch.Generator().manual_seed(seed + 1))
        _FITTED[key] = decomposer.fit(vectors, classifier_weight=weight)
    return _FITTED[key]


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(sorted(METHOD_OPTIONS)), k=st.integers(1, 4), channels=st.integers(4, 10),
       nonnegative=st.booleans(), fit_seed=st.integers(0, 2), batch=st.integers(1, 3), h=st.integers(1, 4),
       w=st.integers(1, 4), scale=st.sampled_from([1e-3, 1.0, 1e3]), dtype=st.sampled_from([torch.float32, torch.float64]),
       factor=st.floats(0.0, 2.0), seed=st.integers(0, 2**16))
def test_decomposition_parts_sum_exactly_to_the_input(method, k, channels, nonnegative, fit_seed, batch, h, w, scale,
                                                      dtype, factor, seed):
    decomposer = _fitted(method, k, channels, nonnegative, fit_seed)
    fmap = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale
    if nonnegative:
        fmap = fmap.abs()
    parts = decomposer.decompose(fmap)
    assert parts.parts.shape == (k + 1, batch, channels, h, w) and parts.parts.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-5 * scale} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10 * scale}
    torch.testing.assert_close(parts.total(), fmap, **tol)
    assert parts.concept_maps().shape == (k, batch, h, w) and bool((parts.concept_maps() >= 0).all())
    for concept in (0, k - 1, k):  # first, last and the residual
        torch.testing.assert_close(parts.edited(concept, 1.0), fmap, **tol)
        torch.testing.assert_close(parts.edited(concept, factor) - fmap, (factor - 1.0) * parts.parts[concept],
                                   rtol=1e-4, atol=1e-4 * scale if dtype == torch.float32 else 1e-9 * scale)
    relevance = decomposer.local_relevance(parts)
    assert relevance.shape == (k + 1, batch, h, w)
    direct = torch.einsum("bchw,c->bhw", fmap, decomposer.classifier_weight.to(dtype))
    torch.testing.assert_close(relevance.sum(0), direct, rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(FeatinvError, match="does not exist"):
        parts.edited(k + 1, 0.5)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(method=st.sampled_from(sorted(METHOD_OPTIONS)), channels=st.integers(2, 8), wrong=st.integers(1, 8))
def test_decomposers_refuse_another_channel_count(method, channels, wrong):
    decomposer = _fitted(method, 2, channels, False, 0)
    if wrong == channels:
        wrong += 1
    with pytest.raises(FeatinvError, match=f"fitted on {channels}"):
        decomposer.decompose(torch.randn(1, wrong, 2, 2))
