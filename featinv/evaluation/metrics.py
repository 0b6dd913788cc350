"""Reconstruction and sample-quality metrics (the paper's Table 1 columns).

* reconstruction quality: cosine similarity between the original's and the reconstruction's feature
  maps at every position, median over positions ("median over superpixels"), and top-5 / top-1
  match of the reconstruction's prediction against the original's top-1 class;
* sample quality: FID and KID live in :mod:`featinv.evaluation.fid` (with the Inception weights they
  need); their names stay importable from here.

Everything here works on tensors; nothing downloads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from featinv.errors import FeatinvError
from featinv.evaluation.fid import (  # re-exported: they lived here before fid.py
    FID_WEIGHT_NAMES,
    INCEPTION_ENV,
    FeatureSpace,
    _fid_inception_module,  # noqa: F401
    backbone_feature_space,
    default_inception_locations,
    find_inception_weights,
    frechet_distance,
    frechet_distance_from_stats,
    inception_feature_space,
    inception_hint,
    is_torchscript,
    kernel_distance,
    load_fid_inception,
    resolve_feature_space,
)
from featinv.features.similarity import cosine_median  # re-export: it moved below the sampler

__all__ = [
    "FID_WEIGHT_NAMES",
    "INCEPTION_ENV",
    "FeatureSpace",
    "backbone_feature_space",
    "cosine_distance_median",
    "cosine_median",
    "default_inception_locations",
    "find_inception_weights",
    "frechet_distance",
    "frechet_distance_from_stats",
    "inception_feature_space",
    "inception_hint",
    "is_torchscript",
    "kernel_distance",
    "load_fid_inception",
    "mean_ci95",
    "resolve_feature_space",
    "topk_match",
]

# ---------------------------------------------------------------------------------------------
# Reconstruction quality
# ---------------------------------------------------------------------------------------------


def cosine_distance_median(f_orig: torch.Tensor, f_rec: torch.Tensor) -> torch.Tensor:
    """``1 - cosine_median`` — the paper's Figure 7 plots distance so lower is better on both axes."""
    return 1.0 - cosine_median(f_orig, f_rec)


def mean_ci95(values: Sequence[float] | torch.Tensor | np.ndarray) -> tuple[float, float, float]:
    """Mean and a two-sided 95% Student-t interval ``(mean, low, high)`` over images.

    With fewer than two values the interval is undefined and returned as NaN (shown as "n/a").
    """
    from scipy import stats

    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, math.nan, math.nan
    sem = float(arr.std(ddof=1)) / math.sqrt(arr.size)
    half = float(stats.t.ppf(0.975, df=arr.size - 1)) * sem
    return mean, mean - half, mean + half


def rate_ci95(successes: int, n: int) -> tuple[float, float]:
    """Two-sided 95% Wilson score interval ``(low, high)`` of a rate such as top-5 match.

    Wilson, not the normal approximation: small evaluation sets often score 0 or a few hits, where the normal
    interval collapses to a point or leaves [0, 1]. ``n == 0`` gives NaNs.
    """
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    z = 1.959963984540054
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def topk_match(logits_orig: torch.Tensor, logits_rec: torch.Tensor, k: int) -> torch.Tensor:
    """Per image: is the original's top-1 class among the reconstruction's top-``k`` classes?"""
    if logits_orig.shape != logits_rec.shape or logits_orig.dim() != 2:
        raise FeatinvError(
            f"logits must both be [B, classes] of the same shape, got {tuple(logits_orig.shape)} and "
            f"{tuple(logits_rec.shape)}; score both image sets with the same classifier"
        )
    k = min(int(k), logits_rec.shape[1])
    if k < 1:
        raise FeatinvError(f"k must be at least 1, got {k}; use k=1 or k=5")
    target = logits_orig.argmax(dim=1, keepdim=True)
    top = logits_rec.topk(k, dim=1).indices
    return (top == target).any(dim=1)

