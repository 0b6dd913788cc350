"""Analyses built on FeatInv: edit a feature map, reconstruct it, show what changed (paper sections 4.2/4.3).

Each analysis is one class with one main method (captum's pattern): ``SomeAnalysis(**options).run(model,
images, out_dir, **inputs)`` computes its numbers for every image, writes one PNG figure and one JSON per
image plus ``summary.json``, and returns an :class:`AnalysisResult`. ``.compute(...)`` gives the numbers
and arrays without writing anything (for notebooks and the demo), ``.figure(item)`` draws one item.

The analyses are plugins of kind ``analyses`` (``steering``, ``interpolation``, ``compose``); this module
holds what they share: loading models/images/decomposers given as objects *or* paths, the
out-of-distribution check for edited feature maps, and figure helpers.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from featinv.errors import FeatinvError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

    from featinv.concepts.base import Decomposer
    from featinv.diffusion.model import FeatInv

__all__ = [
    "YELLOW",
    "Analysis",
    "AnalysisResult",
    "FeatureShiftWarning",
    "NormCheck",
    "NamedImage",
    "as_images",
    "as_model",
    "check_feature_norms",
    "display_image",
    "draw_box_outline",
    "image_panel",
    "new_figure",
    "reference_norms",
    "to_uint8",
]

YELLOW = (255, 255, 0)
#: optional file in a run folder: per-position feature norms seen in training, ``{"quantiles": [...]}``
#: (e.g. the 0th..100th percentiles) or ``{"values": [...]}``; ``config["feature_norms"]`` works the same way
#: an edited map whose largest per-position norm exceeds the reference's largest by this factor is flagged
NORM_RATIO_LIMIT = 1.1


class FeatureShiftWarning(UserWarning):
    """An edited feature map lies outside what FeatInv saw in training; its reconstruction is less reliable."""


@dataclass
class NamedImage:
    """An input image and the name its outputs are written under."""

    name: str
    image: Image.Image


@dataclass
class AnalysisResult:
    """What an analysis run wrote and computed.

    ``items`` holds one per-image result object (analysis-specific, with arrays); ``summary`` is what
    ``summary.json`` contains; ``warnings`` are the out-of-distribution warnings raised along the way.
    """

    analysis: str
    out_dir: Path | None
    items: list[Any]
    summary: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def summary_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "summary.json"


# --------------------------------------------------------------------------------------------- inputs


def as_model(model: FeatInv | str | os.PathLike[str], device: str | torch.device = "cpu") -> FeatInv:
    """A FeatInv model given as an object or as a run folder (see :func:`featinv.diffusion.model.load_model`)."""
    from featinv.diffusion.model import load_model

    return load_model(model, device=device)


def as_decomposer(decomposer: Decomposer | str | os.PathLike[str]) -> Decomposer:
    """A fitted concept decomposer given as an object or as a folder written by `featinv concepts fit`."""
    if isinstance(decomposer, (str, os.PathLike)):
        from featinv.concepts.base import load_decomposer

        return load_decomposer(decomposer)
    if not hasattr(decomposer, "decompose"):
        raise FeatinvError(f"expected a fitted concept decomposer or its folder, got {type(decomposer).__name__}; "
                           "pass featinv.concepts.base.load_decomposer(dir) or the folder path")
    return decomposer


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str) -> str:
    from featinv.data import IMAGE_EXTENSIONS

    stem = Path(name).with_suffix("").as_posix() if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name
    return _SAFE.sub("_", stem).strip("._") or "image"


def _is_named_pair(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) \
        and isinstance(value[1], Image.Image)


def as_images(images: Any, what: str = "images") -> list[NamedImage]:
    """Images given as a path (file or folder), a PIL image, ``(name, PIL)`` pairs, or a list of these.

    Names are made filename-safe and unique, so every image gets its own figure.
    """
    from PIL import Image

    from featinv.data import load_images

    if images is None:
        raise FeatinvError(f"no {what} given; pass an image file, a folder or PIL images")
    if isinstance(images, (str, os.PathLike, Image.Image, NamedImage)) or (
        _is_named_pair(images)
    ):
        images = [images]
    items: list[NamedImage] = []
    for index, entry in enumerate(images):
        if isinstance(entry, NamedImage):
            items.append(entry)
        elif isinstance(entry, Image.Image):
            items.append(NamedImage(f"image{index}", entry.convert("RGB")))
        elif _is_named_pair(entry):
            items.append(NamedImage(str(entry[0]), entry[1].convert("RGB")))
        elif isinstance(entry, (str, os.PathLike)):
            items.extend(NamedImage(name, img) for name, img in load_images([entry]))
        else:
            raise FeatinvError(f"cannot use {type(entry).__name__} as an image; pass file paths, folders or PIL images")
    if not items:
        raise FeatinvError(f"no {what} given; pass an image file, a folder or PIL images")
    seen: dict[str, int] = {}
    for item in items:
        base = _safe_name(item.name)
        count = seen.get(base, 0)
        seen[base] = count + 1
        item.name = base if count == 0 else f"{base}-{count + 1}"
    return items


def pair_up(first: list[NamedImage], second: list[NamedImage], what: str = "image-b") -> list[tuple[NamedImage, NamedImage]]:
    """Zip two image lists; a single second image is used with every first image."""
    if len(second) == 1:
        second = second * len(first)
    if len(first) == 1 and len(second) > 1:
        first = first * len(second)
    if len(first) != len(second):
        raise FeatinvError(f"got {len(first)} first images but {len(second)} {what} images; pass one {what} image "
                           "or as many as first images")
    return list(zip(first, second, strict=True))


def check_fraction(value: float, name: str, low: float = 0.0, high: float = 1.0) -> float:
    """A number in [low, high] or a clear error."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not low <= value <= high:
        raise FeatinvError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def check_count(value: int, name: str) -> int:
    """A positive integer or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FeatinvError(f"{name} must be a positive integer, got {value!r}; pass e.g. {name}=5")
    return value


# ---------------------------------------------------------------------------------- model plumbing


def image_features(model: FeatInv, images: Sequence[Image.Image] | Tensor) -> Tensor:
    """The feature maps FeatInv conditions on (pooled for a pooled run), without gradients."""
    with torch.no_grad():
        return model.features(list(images) if not isinstance(images, Tensor) else images).float()


def reconstruct(model: FeatInv, features: Tensor, seeds: Sequence[int], steps: int, guidance_scale: float | None,
                scheduler: str, batch_size: int, show_progress: bool) -> Tensor:
    """Images ``[N, 3, R, R]`` in [0, 1] for ``features`` with one seed per map (one batched call)."""
    with torch.no_grad():
        result = model.reconstruct(features=features, seeds=list(seeds), guidance_scale=guidance_scale,
                                   steps=steps, scheduler=scheduler, batch_size=batch_size,
                                   progress=show_progress)
    return result.images.detach().float().cpu()


def reconstruct_unique(model: FeatInv, features: Tensor, seeds: Sequence[int], **kwargs: Any) -> Tensor:
    """Like :func:`reconstruct`, but identical (map, seed) pairs are sampled once and shared.

    Saves work (e.g. an attenuation factor of 1 leaves a map unchanged) and makes "unchanged map, same seed"
    give bit-identical images.
    """
    keys: list[int] = []
    unique: list[int] = []
    for i in range(features.shape[0]):
        match = next((k for k, j in enumerate(unique)
                      if seeds[j] == seeds[i] and torch.equal(features[j], features[i])), None)
        if match is None:
            unique.append(i)
            match = len(unique) - 1
        keys.append(match)
    images = reconstruct(model, features[unique], [seeds[j] for j in unique], **kwargs)
    return images[keys]


def reconstruction_features(model: FeatInv, images01: Tensor) -> Tensor:
    """The backbone's features of reconstructed images (resized to the backbone input), as FeatInv sees them."""
    return image_features(model, images01.clamp(0, 1))


def model_description(model: FeatInv) -> dict[str, Any]:
    """Which backbone/layer a result belongs to, for the JSON."""
    info = model.backbone.info
    return {"backbone": info.spec, "layer": info.layer, "channels": info.channels, "grid": list(info.grid),
            "pooled": bool(getattr(model, "pooled", False))}


# ------------------------------------------------------------------------------- distribution check


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


# ------------------------------------------------------------------------------------------ figures


def to_uint8(images01: Tensor | np.ndarray) -> np.ndarray:
    """``[3, H, W]`` (or ``[H, W, 3]``) floats in [0, 1] -> ``[H, W, 3]`` uint8 (:func:`featinv.data.to_uint8`)."""
    from featinv.data import to_uint8 as convert

    return convert(images01)


def display_image(image: Image.Image, size: int, aspect: tuple[int, int] = (1, 1)) -> np.ndarray:
    """The central crop the backbone sees (its input aspect ratio), resized to ``size`` x ``size`` uint8."""
    from fractions import Fraction

    from PIL import Image as PILImage

    from featinv.data import center_crop_box

    th, tw = aspect
    crop = image.convert("RGB").crop(center_crop_box(*image.size, (Fraction(tw, th),) * 2))
    return np.asarray(crop.resize((size, size), PILImage.BILINEAR), dtype=np.uint8).copy()


def draw_box_outline(array: np.ndarray, box: tuple[int, int, int, int], color: tuple[int, int, int] = YELLOW,
                     width: int = 2) -> np.ndarray:
    """A copy of ``array`` (``[H, W, 3]`` uint8) with the outline of pixel box ``(x0, y0, x1, y1)`` drawn inside it.

    ``x1``/``y1`` are exclusive; an empty box draws nothing. The outline is burnt into the pixels (not a
    matplotlib patch), so it sits exactly on the region in both the array and the saved figure.
    """
    out = array.copy()
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return out
    width = max(1, min(width, (x1 - x0 + 1) // 2, (y1 - y0 + 1) // 2))
    color_arr = np.asarray(color, dtype=out.dtype)
    out[y0:y0 + width, x0:x1] = color_arr
    out[y1 - width:y1, x0:x1] = color_arr
    out[y0:y1, x0:x0 + width] = color_arr
    out[y0:y1, x1 - width:x1] = color_arr
    return out


def new_figure(rows: int, cols: int, panel: float = 2.2) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows`` x ``cols`` image panels (no pyplot state, safe in threads and tests)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel * cols, panel * rows + 0.3), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def image_panel(ax: Axes, image: np.ndarray, title: str = "", caption: str | None = None, **imshow: Any) -> None:
    """One image panel with a title above and an optional number below (the paper's cosine captions)."""
    ax.imshow(image, **imshow)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    if caption is not None:
        ax.text(0.5, -0.04, caption, transform=ax.transAxes, ha="center", va="top", fontsize=8)


def format_cosine(value: float) -> str:
    return f"cos {value:.2f}"


# ------------------------------------------------------------------------------------------ protocol


class Analysis(ABC):
    """Base of the analyses: ``compute`` numbers per image, ``figure`` per item, ``run`` writes both.

    Subclasses set ``name`` and implement :meth:`compute`, :meth:`figure` and :meth:`settings`; every
    per-image item has ``name`` and ``numbers()`` (its JSON).
    """

    name: ClassVar[str] = ""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The options this analysis was run with (written to every JSON)."""

    @abstractmethod
    def compute(self, model: Any, images: Any, **inputs: Any) -> list[Any]:
        """Per-image result items, nothing written."""

    @abstractmethod
    def figure(self, item: Any) -> Figure:
        """The figure of one item."""

    def run(self, model: Any, images: Any, out_dir: str | os.PathLike[str] | None = None,
            device: str | torch.device = "cpu", **inputs: Any) -> AnalysisResult:
        """Compute, then write ``<image>.png`` + ``<image>.json`` per image and ``summary.json`` to ``out_dir``.

        ``model`` is a FeatInv model or a run folder; ``images`` paths, folders or PIL images. With
        ``out_dir=None`` nothing is written (use ``result.items`` and :meth:`figure`).
        """
        from featinv.io import ensure_output_dir, save_figure, write_json

        model = as_model(model, device=device)
        target = ensure_output_dir(out_dir) if out_dir is not None else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FeatureShiftWarning)
            items = self.compute(model, images, **inputs)
        shift = [str(w.message) for w in caught if issubclass(w.category, FeatureShiftWarning)]
        for w in caught:  # re-emit everything (recorded ones included) for callers that watch warnings
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        summary = {"analysis": self.name, "settings": self.settings(), "model": model_description(model),
                   "images": {item.name: item.numbers() for item in items}, "warnings": shift}
        figures: list[Path] = []
        if target is not None:
            for item in items:
                figures.append(save_figure(self.figure(item), target / f"{item.name}.png"))
                write_json(target / f"{item.name}.json", {"analysis": self.name, "settings": self.settings(),
                                                          "model": model_description(model), **item.numbers()})
            write_json(target / "summary.json", summary)
        return AnalysisResult(self.name, target, items, summary, figures, shift)


def seeds_for(seed: int, n: int) -> list[int]:
    """``n`` seeds derived from one (``seed, seed+1, ...``) so runs are reproducible."""
    return [int(seed) + i for i in range(n)]
