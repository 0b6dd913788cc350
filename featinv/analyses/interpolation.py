"""Interpolating two feature maps (paper section 4.3, Figure 5).

For weights ``w`` the map ``w * f(A) + (1 - w) * f(B)`` is reconstructed with one shared seed. Under each
reconstruction the figure notes the cosine similarity (per position, median over positions) between the
weighted map and the reconstruction's own features: high at the ends, usually lowest near 50/50, which
says that averaging two feature maps is not in general a well-defined operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featinv.analyses.base import (
    Analysis,
    AnalysisResult,
    NamedImage,
    SamplingOptions,
    as_images,
    as_model,
    check_fraction,
    image_features,
    pair_up,
    reconstruct,
    reconstruction_features,
)
from featinv.analyses.figures import (
    display_image,
    format_cosine,
    image_panel,
    new_figure,
    to_uint8,
)
from featinv.analyses.shift import (
    check_feature_norms,
    reference_norms,
    warn_if_shifted,
)
from featinv.errors import FeatinvError
from featinv.report.notebook import GridDisplay, Panel

__all__ = ["DEFAULT_WEIGHTS", "Interpolation", "InterpolationItem", "interpolate", "parse_weights"]

DEFAULT_WEIGHTS = (1.0, 0.75, 0.6, 0.5, 0.4, 0.25, 0.0)


def parse_weights(weights: str | Sequence[float]) -> list[float]:
    """``"1,.75,.5"`` or a list -> weights of image A, each in [0, 1]."""
    if isinstance(weights, str):
        try:
            values = [float(part) for part in weights.split(",") if part.strip()]
        except ValueError:
            raise FeatinvError(f"weights {weights!r} must be numbers separated by commas, e.g. 1,.75,.5,.25,0") from None
    else:
        values = list(weights)
    if not values:
        raise FeatinvError("no interpolation weights given; pass e.g. 1,.75,.5,.25,0")
    return [check_fraction(v, "every interpolation weight (the share of image A)") for v in values]


def mix(fa: Tensor, fb: Tensor, weight: float) -> Tensor:
    """``weight * fa + (1 - weight) * fb``; the ends return the maps themselves, bit for bit."""
    if weight == 1.0:
        return fa.clone()
    if weight == 0.0:
        return fb.clone()
    return weight * fa + (1.0 - weight) * fb


@dataclass
class InterpolationItem(GridDisplay):
    """One A/B pair: reconstructions per weight and their cosine similarities."""

    name: str
    image_a: np.ndarray
    image_b: np.ndarray
    weights: list[float]
    seed: int
    reconstructions: Tensor         # [W, 3, R, R]
    cosine: list[float]             # weighted map vs the reconstruction's features
    cosine_a: list[float]           # f(A) vs the reconstruction's features
    cosine_b: list[float]           # f(B) vs the reconstruction's features
    names: tuple[str, str] = ("a", "b")
    norm_checks: list[dict[str, Any]] = field(default_factory=list)

    def display_rows(self) -> list[list[Panel]]:
        """The figure's panels in one row: A, one reconstruction per weight (share of A, cosine), B."""
        steps = [(f"{100 * w:.0f}% A, {format_cosine(c)}", to_uint8(image))
                 for w, c, image in zip(self.weights, self.cosine, self.reconstructions, strict=True)]
        return [[(f"A: {self.names[0]}", self.image_a), *steps, (f"B: {self.names[1]}", self.image_b)]]

    def numbers(self) -> dict[str, Any]:
        """Numbers as JSON: per weight, cosine of the mixture vs its reconstruction, A and B."""
        return {"image": self.name, "image_a": self.names[0], "image_b": self.names[1], "seed": self.seed,
                "steps": [{"weight_a": w, "cosine_weighted": c, "cosine_a": ca, "cosine_b": cb, "norm_check": n}
                          for w, c, ca, cb, n in zip(self.weights, self.cosine, self.cosine_a, self.cosine_b,
                                                     self.norm_checks, strict=True)]}


class Interpolation(Analysis):
    """Reconstructions of convex combinations of two images' feature maps (one seed for all weights)."""

    name = "interpolation"

    def __init__(self, weights: str | Sequence[float] = DEFAULT_WEIGHTS, *, progress: bool = True,
                 sampling: SamplingOptions | None = None, **sampling_fields: Any) -> None:
        """``sampling`` (or its fields: seed, steps, guidance_scale, scheduler, batch_size, bf16) sets how to sample."""
        super().__init__(progress, sampling=sampling, **sampling_fields)
        self.weights = parse_weights(weights)

    def settings(self) -> dict[str, Any]:
        return {"weights": self.weights, **self.sampling.settings()}

    def run(self, model: Any, images: Any, out_dir: Any = None, device: Any = "cpu", *,  # type: ignore[override]
            others: Any) -> AnalysisResult:
        """Interpolate every image in ``images`` (A) with ``others`` (B: one image, or one per A)."""
        return super().run(model, images, out_dir, device, others=others)

    def compute(self, model: Any, images: Any, *, others: Any = None) -> list[InterpolationItem]:  # type: ignore[override]
        if others is None:
            raise FeatinvError("interpolation needs a second image; pass others= (or --image-b)")
        model = as_model(model)
        pairs = pair_up(as_images(images, "image-a"), as_images(others, "image-b"))
        return [self._one(model, a, b) for a, b in pairs]

    def _one(self, model: Any, a: NamedImage, b: NamedImage) -> InterpolationItem:
        from featinv.evaluation.metrics import cosine_median

        fa, fb = image_features(model, [a.image, b.image]).split(1)
        maps = torch.cat([mix(fa, fb, w) for w in self.weights])
        reference, ref_name = reference_norms(model, torch.cat([fa, fb]))
        checks = []
        for w, m in zip(self.weights, maps, strict=True):
            check = check_feature_norms(m[None], reference, ref_name)
            checks.append(check.as_dict())
            warn_if_shifted(check, f"weight {w:g} of {a.name}/{b.name}", "mix maps from similar images")
        images = reconstruct(model, maps, [self.sampling.seed] * len(self.weights), self.sampling, self.progress,
                             self.samples)
        rec = reconstruction_features(model, images).cpu()
        count = len(self.weights)
        cos = cosine_median(maps.cpu(), rec)
        cos_a = cosine_median(fa.cpu().expand(count, -1, -1, -1), rec)
        cos_b = cosine_median(fb.cpu().expand(count, -1, -1, -1), rec)
        size = int(images.shape[-1])
        aspect = tuple(int(v) for v in model.backbone.info.input_size)
        return InterpolationItem(
            name=f"{a.name}__{b.name}", image_a=display_image(a.image, size, aspect),
            image_b=display_image(b.image, size, aspect), weights=list(self.weights), seed=self.sampling.seed,
            reconstructions=images, cosine=cos.tolist(), cosine_a=cos_a.tolist(), cosine_b=cos_b.tolist(),
            names=(a.name, b.name), norm_checks=checks,
        )

    def figure(self, item: InterpolationItem) -> Any:
        """Figure 5 layout: original A, one reconstruction per weight (cosine below), original B."""
        fig, axes = new_figure(1, len(item.weights) + 2)
        image_panel(axes[0, 0], item.image_a, f"original A\n{item.names[0]}")
        for j, w in enumerate(item.weights):
            title = f"{100 * w:.0f}% / {100 * (1 - w):.0f}%"
            image_panel(axes[0, j + 1], to_uint8(item.reconstructions[j]), title, format_cosine(item.cosine[j]))
        image_panel(axes[0, -1], item.image_b, f"original B\n{item.names[1]}")
        return fig


def interpolate(model: Any, image_a: Any, image_b: Any, out_dir: Any = None,
                weights: str | Sequence[float] = DEFAULT_WEIGHTS, seed: int = 0, steps: int = 50,
                guidance_scale: float | None = None, scheduler: str = "ddim", batch_size: int = 16,
                device: str = "cpu", progress: bool = True) -> AnalysisResult:
    """Interpolation in one call; ``image_a``/``image_b`` are paths, folders or PIL images (one B, or one per A)."""
    analysis = Interpolation(weights=weights, seed=seed, steps=steps, guidance_scale=guidance_scale,
                             scheduler=scheduler, batch_size=batch_size, progress=progress)
    return analysis.run(model, image_a, out_dir, device, others=image_b)
