"""Feature-consistency loss: train the ControlNet so the backbone, looking at its one-step estimate, sees the map.

The paper trains only with the diffusion loss. This is the training-time counterpart of feature guidance
(:mod:`featinv.diffusion.guidance`), in the style of ControlNet++'s cycle-consistency reward: for a training
sample at a small timestep, the one-step clean estimate x̂₀ (from the model's prediction and the scheduler's
``alphas_cumprod``) is decoded, shown to the frozen backbone exactly as evaluation shows it a reconstruction,
and ``weight · (1 - cosine)`` against the conditioning map (per position, mean over positions and samples;
pooled runs compare pooled vectors) is added to the loss. Gradients reach only the ControlNet: the backbone
and the base are frozen (``requires_grad`` False), so their parameters never get a ``.grad``.

Weight 0 (the default) is the paper's loss: nothing here runs, no random number is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from featinv.diffusion.draws import BatchDraws
from featinv.diffusion.guidance import GuidanceTarget, predicted_clean
from featinv.errors import FeatinvError
from featinv.validation import check_count, check_number

__all__ = ["DEFAULT_MAX_T", "FeatureConsistency"]

#: Apply the term only at timesteps below this (of 1000). Why: above it the one-step estimate x̂₀ is the
#: blurry posterior mean of many images (ᾱ_400 ≈ 0.65 on the pixel bases' cosine schedule, 0.43 on SD's
#: scaled-linear one; at t = 600 only 0.34 / 0.16 of the signal is left), whose features cannot match the
#: map without the ControlNet painting adversarial detail into it. ControlNet++ found the reward must be
#: limited to small noise (it uses t ≤ 200); 400 keeps the layout readable while about 40% of a uniformly
#: drawn batch still receives the term.
DEFAULT_MAX_T = 400


@dataclass(frozen=True)
class FeatureConsistency:
    """How much the backbone's view of x̂₀ must agree with the conditioning map during training.

    weight: ``W`` in ``loss = mse + W · (1 - cos)``; 0 = the paper's loss (no extra compute).
    max_t: only samples whose timestep is below this receive the term (see :data:`DEFAULT_MAX_T`).
    fraction: the part of the batch (drawn at random per step) the term is computed on; lowers its cost.
    """

    weight: float = 0.0
    max_t: int = DEFAULT_MAX_T
    fraction: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", check_number(self.weight, "--consistency-weight", low=0.0))
        check_count(self.max_t, "--consistency-max-t", low=1)
        fraction = check_number(self.fraction, "--consistency-fraction", low=0.0, high=1.0)
        if fraction == 0.0:
            raise FeatinvError("--consistency-fraction must be above 0 and at most 1, got 0; pass e.g. 0.5, or "
                               "--consistency-weight 0 to turn the term off")
        object.__setattr__(self, "fraction", fraction)

    @property
    def active(self) -> bool:
        """Whether the term is computed at all (weight 0: the paper's loss, nothing drawn or run)."""
        return self.weight > 0.0

    def check_timesteps(self, num_train_timesteps: int) -> None:
        """Refuse a threshold the base's schedule does not reach (it would silently apply everywhere)."""
        check_count(self.max_t, "--consistency-max-t", low=1, high=int(num_train_timesteps))

    def selected(self, t: torch.Tensor, drop: torch.Tensor, generator: torch.Generator | BatchDraws | None) -> torch.Tensor:
        """Which samples receive the term: timestep below ``max_t``, conditioning kept, and (for fraction < 1)
        in a random part of the batch drawn from ``generator`` after every draw of the diffusion loss."""
        chosen = (t.cpu() < self.max_t) & ~drop.cpu()
        if self.fraction < 1.0:
            chosen &= BatchDraws.of(generator).rand(t.shape[0]) < self.fraction
        return chosen

    def loss(self, target: GuidanceTarget, scheduler: Any, noisy: torch.Tensor, prediction: torch.Tensor,
             t: torch.Tensor, drop: torch.Tensor, generator: torch.Generator | BatchDraws | None = None) -> torch.Tensor:
        """``weight ·`` the mean over the selected samples of their mean-over-positions ``1 - cos``; 0 when
        no sample is selected. ``target.features`` holds the conditioning maps of the whole batch."""
        rows = torch.nonzero(self.selected(t, drop, generator)).flatten().to(noisy.device)
        if rows.numel() == 0:
            return prediction.new_zeros((), dtype=torch.float32)
        # x̂₀ per sample: predicted_clean takes one timestep, and training draws one per sample
        clean = torch.cat([predicted_clean(scheduler, noisy[i:i + 1], prediction[i:i + 1].float(), t[i])
                           for i in rows.tolist()])
        chosen = replace(target, features=target.features[rows])
        return self.weight * chosen.loss(chosen.decode(clean), slice(None)).mean()
