"""Spatial composition of two feature maps (paper appendix D, Figure 10).

A region of image A's feature map is replaced by the same region of image B's map and the result is
reconstructed with the seed used for A's and B's own reconstructions. The region is outlined in yellow
on every panel; under each reconstruction the figure notes the cosine similarity between the composed
map and the reconstruction's features. The paper finds the influence very local, matching a plain
upscaling of the feature grid to the image.

Regions are named (``top-left``, ``center``, ``bottom-right``, ``full``, ...), feature-grid cells given as
integers ``x0,y0,x1,y1`` (end exclusive), or fractions of the image given as floats in [0, 1].
"""

from __future__ import annotations

import math
import re
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
    image_features,
    pair_up,
    reconstruct_unique,
    reconstruction_features,
)
from featinv.analyses.figures import (
    YELLOW,
    display_image,
    draw_box_outline,
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

__all__ = ["NAMED_REGIONS", "Composition", "CompositionItem", "Region", "compose", "outline_width", "parse_region"]

#: named regions as fractions (x0, y0, x1, y1) of the image
NAMED_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "top-left": (0.0, 0.0, 0.5, 0.5),
    "top-right": (0.5, 0.0, 1.0, 0.5),
    "bottom-left": (0.0, 0.5, 0.5, 1.0),
    "bottom-right": (0.5, 0.5, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "full": (0.0, 0.0, 1.0, 1.0),
    "none": (0.0, 0.0, 0.0, 0.0),
}
_ALIASES = {"centre": "center", "middle": "center", "all": "full", "empty": "none"}
DEFAULT_REGIONS = ("top-left", "center", "bottom-right", "full")
_INT = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Region:
    """A rectangle of feature-grid cells ``[y0:y1, x0:x1]`` (end exclusive) and how it was asked for."""

    label: str
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0

    def pixels(self, width: int, height: int, grid: tuple[int, int]) -> tuple[int, int, int, int]:
        """The region in pixels of a ``width`` x ``height`` image showing the whole ``grid`` (h, w)."""
        gh, gw = grid
        return (round(self.x0 * width / gw), round(self.y0 * height / gh),
                round(self.x1 * width / gw), round(self.y1 * height / gh))

    def as_dict(self) -> dict[str, Any]:
        """The region as JSON: its label, grid cells (x0, y0, x1, y1) and whether it is empty."""
        return {"label": self.label, "cells": [self.x0, self.y0, self.x1, self.y1], "empty": self.empty}


_HELP = ("use a name (" + ", ".join(n for n in NAMED_REGIONS if n != "none") + "), grid cells x0,y0,x1,y1 as "
         "integers, or image fractions x0,y0,x1,y1 as floats in [0, 1]")


def _fraction_to_cells(lo: float, hi: float, size: int) -> tuple[int, int]:
    a, b = math.floor(lo * size + 0.5), math.floor(hi * size + 0.5)
    if hi > lo and b <= a:  # a thin but non-empty region keeps at least one cell
        a = min(a, size - 1)
        b = a + 1
    return a, b


def parse_region(region: str | Sequence[int] | Sequence[float] | Region, grid: tuple[int, int]) -> Region:
    """A region name, ``"x0,y0,x1,y1"`` (ints = cells, floats = fractions) or a tuple -> :class:`Region`."""
    if isinstance(region, Region):
        values: list[Any] = [region.x0, region.y0, region.x1, region.y1]
        label = region.label
        cells = True
    elif isinstance(region, str):
        text = region.strip().lower()
        text = _ALIASES.get(text, text)
        label = text
        if text in NAMED_REGIONS:
            values, cells = list(NAMED_REGIONS[text]), False
        else:
            parts = [p.strip() for p in text.split(",")]
            if len(parts) != 4 or not all(parts):
                raise FeatinvError(f"region {region!r} is not understood; {_HELP}")
            cells = all(_INT.match(p) for p in parts)
            try:
                values = [int(p) for p in parts] if cells else [float(p) for p in parts]
            except ValueError:
                raise FeatinvError(f"region {region!r} is not understood; {_HELP}") from None
    else:
        values = list(region)
        if len(values) != 4:
            raise FeatinvError(f"region {region!r} needs 4 numbers x0,y0,x1,y1; {_HELP}")
        cells = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
        label = ",".join(str(v) for v in values)
    gh, gw = grid
    x0, y0, x1, y1 = values
    if x0 > x1 or y0 > y1:
        raise FeatinvError(f"region {region!r} has x0 > x1 or y0 > y1; write it as x0,y0,x1,y1 with x0 <= x1, y0 <= y1")
    if cells:
        if x0 < 0 or y0 < 0 or x1 > gw or y1 > gh:
            raise FeatinvError(f"region {region!r} leaves the {gh}x{gw} feature grid; use cells with 0 <= x0 <= x1 <= "
                               f"{gw} and 0 <= y0 <= y1 <= {gh}, or fractions like 0.25,0.25,0.75,0.75")
        return Region(label, int(x0), int(y0), int(x1), int(y1))
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise FeatinvError(f"region {region!r} has fractions outside [0, 1]; {_HELP}")
    cx0, cx1 = _fraction_to_cells(x0, x1, gw)
    cy0, cy1 = _fraction_to_cells(y0, y1, gh)
    return Region(label, cx0, cy0, cx1, cy1)


def outline_width(size: int) -> int:
    """Outline thickness in pixels for an image of ``size`` pixels: thin on tiny images, visible on large ones."""
    return max(1, round(size / 128))


def compose_maps(fa: Tensor, fb: Tensor, region: Region) -> Tensor:
    """A's map with ``region`` taken from B's map (an empty region returns A's map unchanged)."""
    out = fa.clone()
    if not region.empty:
        out[..., region.y0:region.y1, region.x0:region.x1] = fb[..., region.y0:region.y1, region.x0:region.x1]
    return out


@dataclass
class CompositionItem(GridDisplay):
    """One A/B pair: A's and B's reconstructions, one composite per region, cosines and outlined panels."""

    name: str
    names: tuple[str, str]
    image_a: np.ndarray
    image_b: np.ndarray
    grid: tuple[int, int]
    regions: list[Region]
    seed: int
    reconstruction_a: Tensor          # [3, R, R]
    reconstruction_b: Tensor
    composites: Tensor                # [N_regions, 3, R, R]
    cosine: list[float]               # composed map vs its reconstruction's features
    cosine_a: list[float]
    cosine_b: list[float]
    cosine_reference: tuple[float, float]   # A's and B's own reconstructions vs their maps
    norm_checks: list[dict[str, Any]] = field(default_factory=list)

    def outlined(self, index: int) -> np.ndarray:
        """The composite for region ``index`` as uint8 ``[R, R, 3]`` with the region outlined in yellow."""
        image = to_uint8(self.composites[index])
        box = self.regions[index].pixels(image.shape[1], image.shape[0], self.grid)
        return draw_box_outline(image, box, YELLOW, width=outline_width(image.shape[0]))

    def display_rows(self) -> list[list[Panel]]:
        """The figure's panels in one row: A, its reconstruction, one outlined composite per region, B's, B."""
        composites = [(f"B in {r.label}, {format_cosine(c)}", self.outlined(j))
                      for j, (r, c) in enumerate(zip(self.regions, self.cosine, strict=True))]
        return [[(f"A: {self.names[0]}", self.image_a),
                 (f"A reconstructed, {format_cosine(self.cosine_reference[0])}", to_uint8(self.reconstruction_a)),
                 *composites,
                 (f"B reconstructed, {format_cosine(self.cosine_reference[1])}", to_uint8(self.reconstruction_b)),
                 (f"B: {self.names[1]}", self.image_b)]]

    def numbers(self) -> dict[str, Any]:
        """Numbers as JSON: per region, cosine of the composed map vs its reconstruction, A and B."""
        return {"image": self.name, "image_a": self.names[0], "image_b": self.names[1], "seed": self.seed,
                "grid": list(self.grid),
                "reconstruction_cosine": {"a": self.cosine_reference[0], "b": self.cosine_reference[1]},
                "regions": [{**r.as_dict(), "cosine_composed": c, "cosine_a": ca, "cosine_b": cb, "norm_check": n}
                            for r, c, ca, cb, n in zip(self.regions, self.cosine, self.cosine_a, self.cosine_b,
                                                       self.norm_checks, strict=True)]}


class Composition(Analysis):
    """Replace a region of A's feature map by B's and reconstruct (Figure 10)."""

    name = "compose"

    def __init__(self, regions: str | Sequence[Any] = DEFAULT_REGIONS, *, progress: bool = True,
                 sampling: SamplingOptions | None = None, **sampling_fields: Any) -> None:
        """``sampling`` (or its fields: seed, steps, guidance_scale, scheduler, batch_size, bf16) sets how to sample."""
        super().__init__(progress, sampling=sampling, **sampling_fields)
        if isinstance(regions, (str, Region)):
            regions = [regions]
        regions = list(regions)
        if regions and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in regions):
            regions = [tuple(regions)]  # one region given as four numbers
        if not regions:
            raise FeatinvError(f"no region given; {_HELP}")
        for region in regions:  # validate the syntax now, the grid bounds once the model is known
            parse_region(region, (10**6, 10**6))
        self.regions = regions

    def settings(self) -> dict[str, Any]:
        return {"regions": [r if isinstance(r, str) else list(r) if not isinstance(r, Region) else r.as_dict()
                            for r in self.regions],
                **self.sampling.settings()}

    def run(self, model: Any, images: Any, out_dir: Any = None, device: Any = "cpu", *,  # type: ignore[override]
            others: Any) -> AnalysisResult:
        """Compose every image in ``images`` (A) with ``others`` (B: one image, or one per A)."""
        return super().run(model, images, out_dir, device, others=others)

    def compute(self, model: Any, images: Any, *, others: Any = None) -> list[CompositionItem]:  # type: ignore[override]
        if others is None:
            raise FeatinvError("composition needs a second image; pass others= (or --image-b)")
        model = as_model(model)
        if getattr(model, "pooled", False):
            raise FeatinvError("spatial composition needs a spatial feature map but this run is pooled (one vector "
                               "copied to every position); use a run trained with --unpooled")
        grid = tuple(int(v) for v in model.backbone.info.grid)
        regions = [parse_region(r, grid) for r in self.regions]  # type: ignore[arg-type]
        pairs = pair_up(as_images(images, "image-a"), as_images(others, "image-b"))
        return [self._one(model, a, b, regions, grid) for a, b in pairs]  # type: ignore[arg-type]

    def _one(self, model: Any, a: NamedImage, b: NamedImage, regions: list[Region],
             grid: tuple[int, int]) -> CompositionItem:
        from featinv.evaluation.metrics import cosine_median

        fa, fb = image_features(model, [a.image, b.image]).split(1)
        composed = torch.cat([compose_maps(fa, fb, r) for r in regions])
        reference, ref_name = reference_norms(model, torch.cat([fa, fb]))
        checks = []
        for r, m in zip(regions, composed, strict=True):
            check = check_feature_norms(m[None], reference, ref_name)
            checks.append(check.as_dict())
            warn_if_shifted(check, f"region {r.label} of {a.name}/{b.name}", "compose maps of similar scale")
        maps = torch.cat([fa, fb, composed])
        images = reconstruct_unique(model, maps, [self.sampling.seed] * maps.shape[0], self.sampling, self.progress,
                                    self.samples)
        rec = reconstruction_features(model, images).cpu()
        count = len(regions)
        own = cosine_median(maps.cpu(), rec)
        cos_a = cosine_median(fa.cpu().expand(count, -1, -1, -1), rec[2:])
        cos_b = cosine_median(fb.cpu().expand(count, -1, -1, -1), rec[2:])
        size = int(images.shape[-1])
        aspect = tuple(int(v) for v in model.backbone.info.input_size)
        return CompositionItem(
            name=f"{a.name}__{b.name}", names=(a.name, b.name), image_a=display_image(a.image, size, aspect),
            image_b=display_image(b.image, size, aspect), grid=grid, regions=regions, seed=self.sampling.seed,
            reconstruction_a=images[0], reconstruction_b=images[1], composites=images[2:],
            cosine=own[2:].tolist(), cosine_a=cos_a.tolist(), cosine_b=cos_b.tolist(),
            cosine_reference=(float(own[0]), float(own[1])), norm_checks=checks,
        )

    def figure(self, item: CompositionItem) -> Any:
        """Figure 10 layout: original A, A's reconstruction, one composite per region (outlined in yellow,
        cosine below), B's reconstruction, original B."""
        fig, axes = new_figure(1, len(item.regions) + 4)
        image_panel(axes[0, 0], item.image_a, f"original A\n{item.names[0]}")
        image_panel(axes[0, 1], to_uint8(item.reconstruction_a), "A reconstructed", format_cosine(item.cosine_reference[0]))
        for j, region in enumerate(item.regions):
            image_panel(axes[0, j + 2], item.outlined(j), f"B in {region.label}", format_cosine(item.cosine[j]))
        image_panel(axes[0, -2], to_uint8(item.reconstruction_b), "B reconstructed", format_cosine(item.cosine_reference[1]))
        image_panel(axes[0, -1], item.image_b, f"original B\n{item.names[1]}")
        return fig


def compose(model: Any, image_a: Any, image_b: Any, out_dir: Any = None,
            region: str | Sequence[Any] = DEFAULT_REGIONS, seed: int = 0, steps: int = 50,
            guidance_scale: float | None = None, scheduler: str = "ddim", batch_size: int = 16,
            device: str = "cpu", progress: bool = True) -> AnalysisResult:
    """Spatial composition in one call; ``region`` is one region or a list (see :func:`parse_region`)."""
    analysis = Composition(regions=region, seed=seed, steps=steps, guidance_scale=guidance_scale,
                           scheduler=scheduler, batch_size=batch_size, progress=progress)
    return analysis.run(model, image_a, out_dir, device, others=image_b)
