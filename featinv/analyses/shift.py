"""The out-of-distribution check for edited feature maps.

An analysis edits feature maps (attenuates a concept, mixes two maps, pastes a region) and asks FeatInv to
reconstruct them. FeatInv only learned maps like the ones it saw in training, so an edit that pushes the
per-position norms beyond that range gives a reconstruction that may not reflect the edit. This module
measures that (:func:`check_feature_norms`) against the run's stored training norms or, failing those, the
original map's, and emits a :class:`FeatureShiftWarning` the analyses collect into their JSON.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from featinv.errors import FeatinvError

__all__ = ["NORM_RATIO_LIMIT", "FeatureShiftWarning", "NormCheck", "check_feature_norms", "position_norms",
           "reference_norms", "warn_if_shifted"]

#: optional file in a run folder: per-position feature norms seen in training, ``{"quantiles": [...]}``
#: (e.g. the 0th..100th percentiles) or ``{"values": [...]}``; ``config["feature_norms"]`` works the same way
#: an edited map whose largest per-position norm exceeds the reference's largest by this factor is flagged
NORM_RATIO_LIMIT = 1.1


class FeatureShiftWarning(UserWarning):
    """An edited feature map lies outside what FeatInv saw in training; its reconstruction is less reliable."""


@dataclass
class NormCheck:
    """How far an edited feature map's per-position norms lie from a reference distribution.

    ``max_percentile``: the percentile rank (0-100) of the edited map's largest norm among the reference
    norms; ``norm_ratio``: largest edited norm / largest reference norm (above 1 = beyond anything in the
    reference); ``fraction_above``: share of positions whose norm exceeds the reference's largest.
    """

    reference: str
    max_norm: float
    reference_max: float
    norm_ratio: float
    max_percentile: float
    fraction_above: float
    out_of_distribution: bool

    def as_dict(self) -> dict[str, Any]:
        """The check as JSON-ready numbers (saved with each analysis item)."""
        return {"reference": self.reference, "max_norm": self.max_norm, "reference_max": self.reference_max,
                "norm_ratio": self.norm_ratio, "max_percentile": self.max_percentile,
                "fraction_above_reference_max": self.fraction_above,
                "out_of_distribution": self.out_of_distribution}


def _stored_training_norms(model: Any) -> Tensor | None:
    """Per-position feature norms (or their quantiles) stored with the run, if the trainer wrote them."""
    for source in (getattr(model, "feature_norms", None), (getattr(model, "config", None) or {}).get("feature_norms")):
        if source is None:
            continue
        if isinstance(source, dict):
            source = source.get("quantiles") or source.get("values")
        if source is None:
            continue
        try:
            values = torch.as_tensor(source, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise FeatinvError("stored training feature norms must be a list of numbers (see feature_norms.json); "
                               "fix or delete them") from None
        values = values[torch.isfinite(values)]
        if values.numel():
            return values.sort().values
    return None


def position_norms(fmap: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> the L2 norm over channels at every position, flattened."""
    return fmap.detach().double().norm(dim=1).flatten().cpu()


def reference_norms(model: Any, original: Tensor) -> tuple[Tensor, str]:
    """Sorted reference norms and their name: the run's training norms if stored, else the original map's."""
    stored = _stored_training_norms(model)
    if stored is not None:
        return stored, "training feature norms stored with the run"
    return position_norms(original).sort().values, "per-position norms of the original image's feature map"


def check_feature_norms(edited: Tensor, reference: Tensor, reference_name: str,
                        limit: float = NORM_RATIO_LIMIT) -> NormCheck:
    """Compare an edited map's per-position norms with sorted reference norms (see :class:`NormCheck`)."""
    norms = position_norms(edited)
    ref_max = float(reference[-1]) if reference.numel() else 0.0
    max_norm = float(norms.max()) if norms.numel() else 0.0
    rank = torch.searchsorted(reference, torch.tensor([max_norm], dtype=reference.dtype), right=True)
    percentile = 100.0 * float(rank[0]) / max(reference.numel(), 1)
    ratio = max_norm / ref_max if ref_max > 0 else (math.inf if max_norm > 0 else 1.0)
    above = float((norms > ref_max).double().mean()) if norms.numel() else 0.0
    return NormCheck(reference_name, max_norm, ref_max, ratio, percentile, above, ratio > limit)


def warn_if_shifted(check: NormCheck, what: str, hint: str) -> str | None:
    """Emit a :class:`FeatureShiftWarning` (and return its text) when ``check`` says the map is out of distribution."""
    if not check.out_of_distribution:
        return None
    ratio = "inf" if math.isinf(check.norm_ratio) else f"{check.norm_ratio:.2f}"
    message = (f"{what}: largest feature norm is {ratio}x the largest of the reference ({check.reference}); "
               f"{100 * check.fraction_above:.0f}% of positions exceed it, so FeatInv never saw such maps in "
               f"training and the reconstruction may not reflect the edit; {hint}")
    warnings.warn(message, FeatureShiftWarning, stacklevel=3)
    return message

