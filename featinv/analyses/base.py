"""The Analysis contract and what every analysis shares: inputs given as objects or paths, reconstruction.

An analysis (paper sections 4.2/4.3) edits feature maps, reconstructs them with FeatInv and shows what
changed, as one figure and one JSON per image. Each is one class with one main method (captum's pattern),
see :class:`Analysis`. Analyses are plugins of kind ``analyses``; the built-ins are ``steering``
(:mod:`featinv.analyses.steering`), ``interpolation`` and ``compose``. The out-of-distribution check for
edited maps lives in :mod:`featinv.analyses.shift`, the figure helpers in :mod:`featinv.analyses.figures`.
The module is just over 400 lines because the contract, its sampling options and the notebook display of
its results are one unit that every analysis plugin imports; splitting them would make plugins import three.
"""

from __future__ import annotations

import dataclasses
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

from featinv.analyses.samples import SampleCache, sample_maps
from featinv.analyses.shift import FeatureShiftWarning
from featinv.errors import FeatinvError
from featinv.io import locks_output
from featinv.report.notebook import GridDisplay, Panel
from featinv.validation import check_count

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

    from featinv.concepts.base import Decomposer
    from featinv.diffusion.model import FeatInv

__all__ = [
    "Analysis",
    "AnalysisResult",
    "NamedImage",
    "SampleCache",
    "SamplingOptions",
    "as_decomposer",
    "as_images",
    "as_model",
    "check_count",
    "check_fraction",
    "pair_up",
    "reconstruct",
    "reconstruct_unique",
    "seeds_for",
]


@dataclass
class NamedImage:
    """An input image and the name its outputs are written under."""

    name: str
    image: Image.Image


@dataclass
class AnalysisResult(GridDisplay):
    """What an analysis run wrote and computed.

    ``items`` holds one per-image result object (analysis-specific, with arrays); ``summary`` is what
    ``summary.json`` contains; ``warnings`` are the out-of-distribution warnings raised along the way. In
    Jupyter it shows as the items' panels (or their written figures), with the warnings below.
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

    def display_rows(self) -> list[list[Panel]]:
        """Every item's rows; an item without ``display_rows`` shows its written figure, if any."""
        from PIL import Image

        rows: list[list[Panel]] = []
        for index, item in enumerate(self.items):
            if isinstance(item, GridDisplay):
                rows += item.display_rows()
            elif index < len(self.figures):
                with Image.open(self.figures[index]) as figure:
                    rows.append([(str(getattr(item, "name", index)), np.asarray(figure.convert("RGB")))])
        return rows

    def display_notes(self) -> list[str]:
        return [f"warning: {message}" for message in self.warnings]


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

    from featinv.data import is_image_object

    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) \
        and (isinstance(value[1], Image.Image) or is_image_object(value[1]))


def as_images(images: Any, what: str = "images") -> list[NamedImage]:
    """Images given as a path (file or folder), an in-memory image (PIL, numpy H×W×C array, ``[3, H, W]``
    tensor), ``(name, image)`` pairs, or a list of these.

    Names are made filename-safe and unique, so every image gets its own figure.
    """
    from featinv.data import as_pil, is_image_object, load_images

    if images is None:
        raise FeatinvError(f"no {what} given; pass an image file, a folder or PIL images")
    if getattr(images, "ndim", 0) == 4 and is_image_object(images):  # a B×H×W×C numpy batch
        images = list(images)
    if isinstance(images, (str, os.PathLike, NamedImage)) or is_image_object(images) or _is_named_pair(images):
        images = [images]
    items: list[NamedImage] = []
    for index, entry in enumerate(images):
        if isinstance(entry, NamedImage):
            items.append(entry)
        elif is_image_object(entry):
            items.append(NamedImage(f"image{index}", as_pil(entry)))
        elif _is_named_pair(entry):
            items.append(NamedImage(str(entry[0]), as_pil(entry[1])))
        elif isinstance(entry, (str, os.PathLike)):
            items.extend(NamedImage(name, img) for name, img in load_images([entry]))
        else:
            raise FeatinvError(f"cannot use {type(entry).__name__} as an image; pass file paths, folders, PIL images "
                               "or numpy arrays")
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


@dataclass(frozen=True)
class SamplingOptions:
    """How an analysis samples its reconstructions; the same for every analysis, so one object passes them.

    ``seed``: the first seed (an analysis that needs several uses ``seed, seed+1, ...``, see
    :func:`seeds_for`); ``steps``: denoising steps; ``guidance_scale``: classifier-free guidance (None: the
    run's default); ``scheduler``: ``ddim``, ``dpm++`` or ``unipc``; ``batch_size``: samples per batch (does
    not change the images); ``bf16``: sample in bfloat16 (GPU); ``feature_guidance``: a strength or a
    :class:`~featinv.diffusion.guidance.FeatureGuidance` (0 = the paper's sampler, see docs/guidance.md);
    ``control_strength`` and ``guess_mode``: the authors' sampler controls (1.0 and off = the paper's sampler).
    """

    seed: int = 0
    steps: int = 50
    guidance_scale: float | None = None
    scheduler: str = "ddim"
    batch_size: int = 16
    bf16: bool = False
    feature_guidance: Any = 0.0
    control_strength: float = 1.0
    guess_mode: bool = False

    def __post_init__(self) -> None:
        from featinv.diffusion.controlnet import ControlScales
        from featinv.diffusion.guidance import FeatureGuidance

        ControlScales(self.control_strength, self.guess_mode)  # a bad strength is refused here, before any work
        object.__setattr__(self, "feature_guidance", FeatureGuidance.of(self.feature_guidance))
        from featinv.validation import check_guidance, check_seeds

        seeds = check_seeds(self.seed)
        if len(seeds) != 1:
            raise FeatinvError(f"seed must be one integer, got {self.seed!r}; an analysis derives the others from it")
        object.__setattr__(self, "seed", seeds[0])
        check_count(self.steps, "steps")
        check_count(self.batch_size, "batch_size")
        if self.guidance_scale is not None:
            check_guidance(self.guidance_scale)
        if not isinstance(self.scheduler, str) or not self.scheduler:
            raise FeatinvError(f"scheduler must be a name such as ddim, dpm++ or unipc, got {self.scheduler!r}")

    @classmethod
    def of(cls, sampling: SamplingOptions | None = None, **fields: Any) -> SamplingOptions:
        """``sampling`` (or the defaults) with ``fields`` replaced; an unknown field name is a clear error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise FeatinvError(f"unknown option {unknown[0]!r}; the sampling options are {', '.join(names)}, and the "
                               "analysis's own options are listed in its documentation")
        if sampling is not None and not fields:
            return sampling
        return dataclasses.replace(sampling or cls(), **fields)

    def settings(self) -> dict[str, Any]:
        """The options that change the images, as written to every analysis JSON."""
        settings: dict[str, Any] = {"seed": self.seed, "steps": self.steps, "guidance_scale": self.guidance_scale,
                                    "scheduler": self.scheduler}
        if self.bf16:
            settings["bf16"] = True
        if self.feature_guidance.active:  # only when on: unguided analyses' JSON stays as it was
            settings["feature_guidance"] = self.feature_guidance.describe()
        settings.update(self._control())
        return settings

    def _control(self) -> dict[str, Any]:
        """The authors' sampler controls when not at their defaults (default runs' JSON stays as it was)."""
        if self.control_strength == 1.0 and not self.guess_mode:
            return {}
        return {"control_strength": float(self.control_strength), "guess_mode": bool(self.guess_mode)}

    def reconstruct_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`featinv.diffusion.model.FeatInv.reconstruct` (all but the seeds)."""
        return {"steps": self.steps, "guidance_scale": self.guidance_scale, "scheduler": self.scheduler,
                "batch_size": self.batch_size, "bf16": self.bf16, "feature_guidance": self.feature_guidance,
                **self._control()}


# ---------------------------------------------------------------------------------- model plumbing


def image_features(model: FeatInv, images: Sequence[Image.Image] | Tensor) -> Tensor:
    """The feature maps FeatInv conditions on (pooled for a pooled run), without gradients."""
    with torch.no_grad():
        return model.features(list(images) if not isinstance(images, Tensor) else images).float()


def reconstruct(model: FeatInv, features: Tensor, seeds: Sequence[int], sampling: SamplingOptions,
                show_progress: bool, cache: SampleCache | None = None) -> Tensor:
    """Images ``[N, 3, R, R]`` in [0, 1] for ``features`` with one seed per map (one batched call); pairs held
    by ``cache`` (an analysis's ``self.samples``) are not sampled again."""
    return sample_maps(model, features, seeds, sampling, show_progress, cache)[0]


def reconstruct_unique(model: FeatInv, features: Tensor, seeds: Sequence[int], sampling: SamplingOptions,
                       show_progress: bool, cache: SampleCache | None = None) -> Tensor:
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
    images = reconstruct(model, features[unique], [seeds[j] for j in unique], sampling, show_progress, cache)
    return images[keys]


def reconstruction_features(model: FeatInv, images01: Tensor) -> Tensor:
    """The backbone's features of reconstructed images (resized to the backbone input), as FeatInv sees them."""
    return image_features(model, images01.clamp(0, 1))


def model_description(model: FeatInv) -> dict[str, Any]:
    """Which backbone/layer a result belongs to, for the JSON."""
    info = model.backbone.info
    return {"backbone": info.spec, "layer": info.layer, "channels": info.channels, "grid": list(info.grid),
            "pooled": bool(getattr(model, "pooled", False))}


# ------------------------------------------------------------------------------------------ protocol


class Analysis(ABC):
    """Base class of the analyses; subclass it to add one (register the class with ``register_analyses``).

    The contract:

    * ``name`` (class attribute): the registered name; it names the outputs' ``"analysis"`` field.
    * ``__init__(**options)``: every option of the analysis, validated at once (a bad value is a
      :class:`~featinv.errors.FeatinvError`); ``featinv viz NAME --option KEY=VALUE`` passes them here. It
      must accept ``progress=`` and ``sampling=`` (a :class:`SamplingOptions`, built by the CLI from
      ``--seed/--steps/--guidance/--scheduler/--batch-size/--bf16``) and hand them to
      ``super().__init__``, which stores ``self.progress`` and ``self.sampling``; the simplest way is
      ``def __init__(self, my_option=1, **common): super().__init__(**common)``.
    * :meth:`settings` (abstract): the options as JSON, written to every output file.
    * :meth:`compute` (abstract): ``compute(model, images, **inputs) -> list[item]`` computes one item per
      image (or image pair) and writes nothing. ``model`` is a loaded FeatInv model; ``images`` whatever
      :func:`as_images` accepts; ``inputs`` the analysis's extra inputs (``decomposer=``, ``others=``...).
      Every item has a ``name`` (a filename-safe stem) and ``numbers()`` (its JSON-ready dict).
    * :meth:`figure` (abstract): the matplotlib ``Figure`` of one item.

    Reconstruct edited maps with :func:`reconstruct` (or :func:`reconstruct_unique`), ``self.sampling`` and
    ``cache=self.samples``,
    and check them with :mod:`featinv.analyses.shift` so an edit FeatInv never saw in training is flagged.

    :meth:`run` does the rest, the same for every analysis: it loads ``model`` when given a run folder
    (:func:`as_model`), calls :meth:`compute` with ``images`` and ``inputs`` unchanged, records every
    :class:`~featinv.analyses.shift.FeatureShiftWarning` raised meanwhile (and re-emits it), and, when
    ``out_dir`` is given, writes ``<item.name>.png`` (the figure) and ``<item.name>.json`` (``analysis``,
    ``settings``, ``model`` and the item's numbers) per item plus ``summary.json`` (all items' numbers
    and the warnings), atomically. It returns an :class:`AnalysisResult`.
    """

    name: ClassVar[str] = ""

    def __init__(self, progress: bool = True, *, sampling: SamplingOptions | None = None,
                 samples: SampleCache | None = None, **sampling_fields: Any) -> None:
        """``sampling`` (a :class:`SamplingOptions`), or its fields one by one (``steps=2``) for compatibility;
        ``samples``: a :class:`~featinv.analyses.samples.SampleCache` shared with other calls (an interactive
        session), passed to :func:`reconstruct` as ``cache=self.samples``."""
        self.progress = progress
        self.sampling = SamplingOptions.of(sampling, **sampling_fields)
        self.samples = samples

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The options this analysis was run with (written to every JSON)."""

    @abstractmethod
    def compute(self, model: Any, images: Any, **inputs: Any) -> list[Any]:
        """Per-image result items, nothing written."""

    @abstractmethod
    def figure(self, item: Any) -> Figure:
        """The figure of one item."""

    @locks_output("out_dir")
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
