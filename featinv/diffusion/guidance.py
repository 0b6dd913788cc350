"""Feature guidance: steer the sampler so the backbone, looking at the reconstruction, sees the target map.

The paper's sampler never checks its output against the condition. Guidance closes that loop in the
style of DPS / universal guidance: at a guided step the one-step clean estimate x̂₀ (from the model's
prediction and the scheduler's ``alphas_cumprod``) is decoded, shown to the frozen backbone exactly as
evaluation shows it a reconstruction (:func:`backbone_view`), and the per-image mean over positions of
``1 - cosine`` against the conditioning map is differentiated with respect to the latents ``x_t``. The
latents then move by ``-s·sqrt(1-ᾱ_t)·g`` (``g`` divided by its per-sample standard deviation) before the
step's prediction is computed again on the moved latents and the scheduler steps.

Strength 0 (the default) is the paper's sampler: nothing here runs. Past some strength the sampler
starts to fool the backbone (high-frequency textures, wrong colours) instead of drawing the image;
``docs/guidance.md`` has the measured curve and the recommended strength.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from featinv.errors import FeatinvError

__all__ = ["NORMALIZATIONS", "RECOMMENDED_STRENGTH", "FeatureGuidance", "GuidanceTarget", "backbone_view",
           "fidelity_scores", "guide_latents", "predicted_clean"]

NORMALIZATIONS = ("std", "none")
#: measured on the demo's unpooled model (docs/guidance.md): the cosine gain flattens while pixel error
#: is still no worse than the paper's sampler
RECOMMENDED_STRENGTH = 0.1
_SCHEDULE_HELP = "all, ramp, first:K or last:K (K guided steps)"


@dataclass(frozen=True)
class FeatureGuidance:
    """How hard and when the sampler is pulled toward the target features (one object for every caller).

    strength: ``s`` in ``x_t -= s·sqrt(1-ᾱ_t)·g``; 0 = the paper's sampler (no extra compute).
    schedule: ``all`` steps, the ``first:K`` or ``last:K`` steps, or ``ramp`` (full strength at the first
      step falling linearly to ``1/n`` of it at the last, where guidance paints textures rather than layout).
    normalize: ``std`` divides each sample's gradient by its standard deviation (the reference method: the
      step size then does not depend on the loss scale); ``none`` uses the raw gradient.
    chunk_size: samples per gradient computation; bounds memory (UNet + VAE decoder + backbone backward).
    """

    strength: float = 0.0
    schedule: str = "all"
    normalize: str = "std"
    chunk_size: int = 4

    def __post_init__(self) -> None:
        try:
            strength = float(self.strength)
        except (TypeError, ValueError):
            raise FeatinvError(f"feature guidance strength {self.strength!r} is not a number; pass e.g. "
                               f"--feature-guidance {RECOMMENDED_STRENGTH}") from None
        if not math.isfinite(strength) or strength < 0:
            raise FeatinvError(f"feature guidance strength must be a finite number >= 0, got {self.strength!r}; "
                               f"pass 0 (off) or e.g. {RECOMMENDED_STRENGTH}")
        object.__setattr__(self, "strength", strength)
        _parse_schedule(self.schedule)
        if self.normalize not in NORMALIZATIONS:
            raise FeatinvError(f"unknown guidance normalisation {self.normalize!r}; use one of "
                               f"{', '.join(NORMALIZATIONS)}")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise FeatinvError(f"guidance chunk size must be an integer >= 1, got {self.chunk_size!r}")

    @classmethod
    def of(cls, value: FeatureGuidance | float | int | None) -> FeatureGuidance:
        """A strength (or None = off) as guidance with the default options; guidance objects pass through."""
        if isinstance(value, FeatureGuidance):
            return value
        return cls(strength=0.0 if value is None else value)  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        return self.strength > 0.0

    def weight(self, index: int, total: int) -> float:
        """The strength at step ``index`` (0-based) of ``total``: 0 where the schedule skips the step."""
        kind, k = _parse_schedule(self.schedule)
        if kind == "first":
            return self.strength if index < k else 0.0
        if kind == "last":
            return self.strength if index >= total - k else 0.0
        if kind == "ramp":
            return self.strength * (total - index) / total
        return self.strength

    def describe(self) -> dict[str, Any]:
        """What a result or an index records (the chunk size changes memory, not images)."""
        return {"strength": self.strength, "schedule": self.schedule, "normalize": self.normalize}


def _parse_schedule(schedule: Any) -> tuple[str, int]:
    text = str(schedule).strip().lower()
    kind, _, count = text.partition(":")
    if kind in ("all", "ramp") and not count:
        return kind, 0
    if kind in ("first", "last") and count.isdigit() and int(count) >= 1:
        return kind, int(count)
    raise FeatinvError(f"unknown guidance schedule {schedule!r}; use {_SCHEDULE_HELP}")


def predicted_clean(scheduler: Any, latents: torch.Tensor, prediction: torch.Tensor, t: Any) -> torch.Tensor:
    """The one-step clean estimate x̂₀ for the scheduler's prediction type (epsilon, v_prediction, sample)."""
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None or float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        raise FeatinvError(f"feature guidance needs a variance-preserving scheduler with alphas_cumprod "
                           f"({type(scheduler).__name__} is not); use --scheduler ddim, dpm++ or unipc")
    alpha = alphas.to(latents.device, torch.float32)[int(t)]
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (latents - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * latents - (1 - alpha).sqrt() * prediction
    if kind == "sample":
        return prediction
    raise FeatinvError(f"feature guidance does not know the prediction type {kind!r}; use a base that predicts "
                       "epsilon, v_prediction or sample")


def backbone_view(backbone: Any, images01: torch.Tensor, pooled: bool) -> torch.Tensor:
    """The backbone's map of a reconstruction exactly as evaluation computes it (the backbone's own resize
    and normalisation, then the layer); pooled runs compare pooled vectors ``[N, C]``. Differentiable."""
    fmap = backbone.features(backbone.normalize(images01))
    return fmap.mean(dim=(2, 3)) if pooled else fmap


def _as_target(features: torch.Tensor, pooled: bool) -> torch.Tensor:
    return features.mean(dim=(2, 3)) if pooled and features.ndim == 4 else features


@dataclass
class GuidanceTarget:
    """What guidance scores against: the backbone, the maps to match and how latents become images."""

    backbone: Any
    features: torch.Tensor                       # the conditioning maps [N, C, h, w]
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents -> images in [0, 1] (differentiable)
    pooled: bool = False

    def loss(self, images01: torch.Tensor, rows: slice) -> torch.Tensor:
        """Per image: mean over positions of ``1 - cosine`` against its target ``[n]``."""
        seen = backbone_view(self.backbone, images01, self.pooled)
        target = _as_target(self.features[rows], self.pooled).to(seen.device, seen.dtype)
        cos = F.cosine_similarity(seen, target, dim=1, eps=1e-8)
        return (1.0 - cos).reshape(cos.shape[0], -1).mean(dim=1)  # pooled runs: one position


def guide_latents(guidance: FeatureGuidance, target: GuidanceTarget, scheduler: Any, latents: torch.Tensor,
                  t: Any, weight: float, predict: Callable[[torch.Tensor, slice], torch.Tensor]) -> torch.Tensor:
    """Latents moved by ``-weight·sqrt(1-ᾱ_t)·g`` along the normalised gradient of the fidelity loss.

    ``predict(x, rows)`` is the step's (CFG-combined) model prediction for the latents ``x`` of samples
    ``rows``. The gradient is computed ``guidance.chunk_size`` samples at a time: samples do not interact,
    so chunking changes memory, not the gradient.
    """
    grads = []
    for start in range(0, latents.shape[0], guidance.chunk_size):
        rows = slice(start, start + guidance.chunk_size)
        with torch.enable_grad():
            x = latents[rows].detach().requires_grad_(True)
            clean = predicted_clean(scheduler, x, predict(x, rows).float(), t)
            loss = target.loss(target.decode(clean), rows).sum()
            grads.append(torch.autograd.grad(loss, x)[0])
    grad = torch.cat(grads)
    if guidance.normalize == "std":
        grad = grad / grad.flatten(1).std(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))
    alpha = scheduler.alphas_cumprod.to(latents.device, torch.float32)[int(t)]
    return latents - weight * (1 - alpha).sqrt() * grad


def fidelity_scores(backbone: Any, images01: torch.Tensor, features: torch.Tensor, pooled: bool) -> torch.Tensor:
    """Each reconstruction's cosine to its target map, median over positions (evaluation's score) ``[N]``."""
    from featinv.features.similarity import cosine_median

    seen = backbone_view(backbone, images01, pooled)
    return cosine_median(_as_target(features, pooled).to(seen.device, seen.dtype).cpu(), seen.cpu())

