"""The explorer's session: the runs, concepts and example images it started with, and one method per panel.

`featinv explore` (:mod:`featinv.apps.explore_ui`) is a thin Gradio page over :class:`Explorer`; this
module is plain Python, so tests and notebooks call the same methods. Each method only calls the Python
API -- :meth:`FeatInv.reconstruct <featinv.diffusion.model.FeatInv.reconstruct>` and the ``Steering``,
``Composition`` and ``Interpolation`` analyses -- and returns an :class:`ExploreResult` (captioned panels,
notes, out-of-distribution warnings, seconds taken). Every panel and analysis samples through one
:class:`~featinv.analyses.samples.SampleCache` (per run, feature map, seed and settings), so a concept edit
samples only its edited maps once the image was reconstructed; analysis results are cached per request,
so asking again answers at once; every result is kept
in :attr:`Explorer.history` for :meth:`Explorer.export`, which renders the session with the demo's report
code (:mod:`featinv.report.html`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from featinv.analyses.base import (
    NamedImage,
    SamplingOptions,
    as_decomposer,
    as_model,
    image_features,
    seeds_for,
)
from featinv.analyses.samples import SampleCache, sample_maps
from featinv.analyses.shift import FeatureShiftWarning
from featinv.errors import FeatinvError
from featinv.report.notebook import GridDisplay, Panel
from featinv.validation import check_count

__all__ = ["DEFAULT_STEPS", "MAX_UPLOAD_BYTES", "ExploreResult", "ExploreSettings", "Explorer"]

#: DDIM steps by default: the issue's interactive budget (a 2-seed answer in seconds on a CPU)
DEFAULT_STEPS = 25
#: the largest upload read (bytes); decoding is also bounded in pixels by featinv.data
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
_CACHE_SIZE = 512


@dataclass(frozen=True)
class ExploreSettings:
    """How every panel samples: the Settings panel's values (validated by :class:`SamplingOptions`)."""

    steps: int = DEFAULT_STEPS
    scheduler: str = "ddim"
    guidance_scale: float | None = None
    feature_guidance: float = 0.0
    seeds: int = 2
    first_seed: int = 0

    def __post_init__(self) -> None:
        check_count(self.seeds, "seeds")
        self.sampling()  # a bad step count, scheduler or guidance is one clear line now, not mid-request

    def sampling(self) -> SamplingOptions:
        """The analyses' sampling options (progress bars off: the page shows the time instead)."""
        return SamplingOptions(seed=self.first_seed, steps=self.steps, guidance_scale=self.guidance_scale,
                               scheduler=self.scheduler, feature_guidance=self.feature_guidance)

    def seed_list(self) -> list[int]:
        """The seeds every panel samples with: ``first_seed, first_seed + 1, ...``."""
        return seeds_for(self.first_seed, self.seeds)

    def describe(self) -> str:
        """The settings in one line, shown with every answer's time."""
        guidance = "run default" if self.guidance_scale is None else f"{self.guidance_scale:g}"
        return (f"{self.scheduler} {self.steps} steps, guidance {guidance}, feature guidance "
                f"{self.feature_guidance:g}, seeds {', '.join(map(str, self.seed_list()))}")


@dataclass
class ExploreResult(GridDisplay):
    """One answer of the explorer: rows of captioned panels, notes, warnings and how long it took."""

    kind: str
    title: str
    rows: list[list[Panel]]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settings: str = ""
    cached: bool = False

    def display_rows(self) -> list[list[Panel]]:
        return self.rows

    def display_title(self) -> str:
        return f"{self.kind}: {self.title}"

    def display_notes(self) -> list[str]:
        return [*self.notes, *(f"warning: {w}" for w in self.warnings), self.timing()]

    def timing(self) -> str:
        """How the answer came: computed in N s, or served from the cache."""
        return "served from the cache" if self.cached else f"took {self.seconds:.2f} s ({self.settings})"

    def panels(self) -> list[Panel]:
        """All panels in reading order (the page shows them as one gallery)."""
        return [panel for row in self.rows for panel in row]


def image_digest(image: Image.Image) -> str:
    """A key for an image's pixels (the same picture uploaded twice hits the cache)."""
    picture = image.convert("RGB")
    return hashlib.sha1(picture.tobytes() + repr(picture.size).encode()).hexdigest()


def _run_names(runs: Sequence[Any]) -> list[str]:
    """Unique display names: a run folder's name, else ``run0``, ``run1`` ..."""
    names: list[str] = []
    for index, run in enumerate(runs):
        base = Path(run).name if isinstance(run, (str, os.PathLike)) else f"run{index}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _example_images(images: str | os.PathLike[str] | None) -> dict[str, Image.Image]:
    """Named example images: from ``images`` (a file or folder) or the photographs shipped offline."""
    from featinv.data import builtin_photos, load_images

    if images is not None:
        found = dict(load_images([images]))
        if not found:
            raise FeatinvError(f"no images found in {images}; pass a folder with .png/.jpg images to --images")
        return found
    try:
        return dict(builtin_photos())
    except (ImportError, FeatinvError):  # without the demo extra the page still takes uploads
        return {}


class Explorer:
    """The models, concepts and examples of one explore session, with one method per panel of the page.

    ``runs``: FeatInv models or run folders (shown side by side); ``concepts``: a fitted decomposer or its
    folder, for the Steer panel; ``images``: a file or folder of example images (default: the photographs
    shipped with scikit-image/scikit-learn when installed).
    """

    def __init__(self, runs: Sequence[Any], concepts: Any = None, images: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu", settings: ExploreSettings | None = None) -> None:
        if isinstance(runs, (str, os.PathLike)) or hasattr(runs, "reconstruct"):
            runs = [runs]
        if not runs:
            raise FeatinvError("no run given; pass at least one run folder with --run DIR (written by `featinv train`)")
        self.models = {name: as_model(run, device=device) for name, run in zip(_run_names(runs), runs, strict=True)}
        self.decomposer = None if concepts is None else as_decomposer(concepts)
        if self.decomposer is not None:
            info = self.models[self.analysis_run()].backbone.info
            self.decomposer.check_backbone(info.spec, info.layer, info.channels)
        self.examples = _example_images(images)
        self.settings = settings or ExploreSettings()
        self.history: list[ExploreResult] = []
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        # every panel and analysis samples through one cache: an unchanged (map, seed) is sampled once per session
        self.samples = SampleCache(_CACHE_SIZE)

    # ------------------------------------------------------------------------------------- inputs
    @property
    def n_concepts(self) -> int:
        return 0 if self.decomposer is None else int(self.decomposer.n_concepts)

    def analysis_run(self, run: str | None = None) -> str:
        """The run the analyses use: ``run`` if given, else the first unpooled one (composition needs a grid)."""
        if run is not None:
            if run not in self.models:
                raise FeatinvError(f"run {run!r} is not loaded; choose one of {', '.join(self.models)}")
            return run
        return next((name for name, model in self.models.items() if not model.pooled), next(iter(self.models)))

    def example(self, name: str) -> Image.Image:
        """An example image by name (the page offers the names; no path from the browser is ever opened)."""
        if name not in self.examples:
            raise FeatinvError(f"no example image called {name!r}; choose one of {', '.join(self.examples) or '(none)'}")
        return self.examples[name]

    @staticmethod
    def open_upload(path: str | os.PathLike[str] | None, limit: int = MAX_UPLOAD_BYTES) -> Image.Image:
        """An uploaded file decoded as an RGB image: size-limited, and anything that is not an image refused."""
        from featinv.data import open_image

        if path is None:
            raise FeatinvError("no image given; choose an example or upload an image")
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        if size > limit:
            raise FeatinvError(f"the upload is {size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit; "
                               "upload a smaller image")
        try:
            return open_image(path)
        except FeatinvError:
            raise FeatinvError("the upload is not a readable image (corrupt, truncated, too large or another "
                               "format); upload a PNG or JPEG") from None

    # ------------------------------------------------------------------------------------- caching
    def _cached(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> tuple[Any, bool]:
        """``compute()`` once per key (least recently used entries dropped); returns (value, was cached)."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key], True
        value = compute()
        self._cache[key] = value
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return value, False

    def clear_cache(self) -> None:
        """Forget every cached answer and sample (the benchmark times cold requests this way)."""
        self._cache.clear()
        self.samples.clear()

    def _answer(self, kind: str, key: tuple[Any, ...], settings: ExploreSettings,
                compute: Callable[[], tuple[str, list[list[Panel]], list[str]]]) -> ExploreResult:
        """Run ``compute`` (title, rows, notes) timed, with shift warnings collected; cached per request."""
        def timed() -> ExploreResult:
            started = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FeatureShiftWarning)
                title, rows, notes = compute()
            shift = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, FeatureShiftWarning)))
            return ExploreResult(kind, title, rows, notes, shift, time.perf_counter() - started, settings.describe())

        result, cached = self._cached((kind, settings, *key), timed)
        if cached:
            result = ExploreResult(result.kind, result.title, result.rows, result.notes, result.warnings,
                                   result.seconds, result.settings, cached=True)
        self.history.append(result)
        return result

    # ------------------------------------------------------------------------------------- panels
    def _reconstructions(self, run: str, image: Image.Image, settings: ExploreSettings) -> tuple[torch.Tensor, list[float]]:
        """``run``'s images ``[N, 3, R, R]`` and cosines for the settings' seeds; each (map, seed) sampled once."""
        model = self.models[run]
        features = image_features(model, [image])
        seeds = settings.seed_list()
        return sample_maps(model, features.expand(len(seeds), *features.shape[1:]), seeds, settings.sampling(),
                           False, self.samples)

    def top_classes(self, run: str, images: list[Image.Image] | torch.Tensor, k: int = 5) -> list[str]:
        """The backbone's top-``k`` classes (name and probability) of each image, as one caption line each."""
        from featinv.analyses.steering import class_name

        backbone = self.models[run].backbone
        with torch.no_grad():
            probabilities = backbone.logits(backbone.preprocess(images)).float().softmax(-1).cpu()
        top = probabilities.topk(min(k, probabilities.shape[-1]), dim=-1)
        count = probabilities.shape[-1]
        return [", ".join(f"{class_name(int(i), count) or f'class {int(i)}'} {float(p):.2f}"
                          for p, i in zip(values, indices, strict=True))
                for values, indices in zip(top.values, top.indices, strict=True)]

    def reconstruct(self, image: Image.Image, settings: ExploreSettings | None = None,
                    name: str = "image") -> ExploreResult:
        """The original and, from every run, reconstructions for the settings' seeds with cosine and top-5."""
        from featinv.analyses.figures import display_image
        from featinv.data import to_uint8

        settings = settings or self.settings

        def compute() -> tuple[str, list[list[Panel]], list[str]]:
            first = next(iter(self.models))
            rows: list[list[Panel]] = []
            notes = [f"original, top-5 ({first}): {self.top_classes(first, [image])[0]}"]
            for run in self.models:
                images, cosines = self._reconstructions(run, image, settings)
                rows.append([(f"{run} seed {s}, cos {c:.2f}", to_uint8(img))
                             for s, c, img in zip(settings.seed_list(), cosines, images, strict=True)])
                notes += [f"{run} seed {s}: cos {c:.3f}; top-5: {t}"
                          for s, c, t in zip(settings.seed_list(), cosines, self.top_classes(run, images), strict=True)]
            aspect = tuple(int(v) for v in self.models[first].backbone.info.input_size)
            original = display_image(image, int(rows[0][0][1].shape[0]), aspect)
            return name, [[("original", original)], *rows], notes

        return self._answer("reconstruct", (image_digest(image),), settings, compute)

    def steer(self, image: Image.Image, factors: Sequence[float], settings: ExploreSettings | None = None,
              run: str | None = None, name: str = "image") -> ExploreResult:
        """FeatInv-Viz with one factor per concept (0 removes, 1 keeps, 2 doubles), through :class:`Steering`.

        Concepts sharing a factor go through one analysis call; each concept is edited on its own, as in the
        paper, and shows its map, its difference mask and its steered reconstruction (Grad-CAM beside).
        """
        from featinv.analyses.steering import Steering

        if self.decomposer is None:
            raise FeatinvError("no concepts loaded; start `featinv explore` with --concepts DIR (fit them with "
                               "`featinv concepts fit`)")
        factors = [float(f) for f in factors]
        if len(factors) != self.n_concepts:
            raise FeatinvError(f"got {len(factors)} concept factors for {self.n_concepts} concepts; pass one per concept")
        settings = settings or self.settings
        run = self.analysis_run(run)

        def compute() -> tuple[str, list[list[Panel]], list[str]]:
            groups: dict[float, list[int]] = {}
            for concept, factor in enumerate(factors):
                groups.setdefault(factor, []).append(concept)
            rows: dict[int, list[Panel]] = {}
            top: list[Panel] = []
            for factor, concepts in groups.items():
                analysis = Steering(attenuate=factor, n=settings.seeds, gradcam=not top, progress=False,
                                    sampling=settings.sampling(), samples=self.samples)
                item = analysis.compute(self.models[run], [NamedImage(name, image)], decomposer=self.decomposer,
                                        concepts=concepts)[0]
                item_rows = item.display_rows()
                top = top or item_rows[0]
                rows.update(zip(concepts, item_rows[1:], strict=True))
            notes = [f"run {run}; each concept scaled by its slider on its own (0 removes it, 1 keeps it, 2 "
                     "doubles it); the mask is where the steered reconstruction differs from the original's"]
            return name, [top, *(rows[c] for c in sorted(rows))], notes

        return self._answer("steer", (image_digest(image), tuple(factors), run), settings, compute)

    def _pair(self, analysis: Any, run: str, image_a: Image.Image, image_b: Image.Image,
              names: tuple[str, str]) -> Any:
        """The one item of a two-image analysis (composition, interpolation) for A and B on ``run``."""
        return analysis.compute(self.models[run], [NamedImage(names[0], image_a)],
                                others=[NamedImage(names[1], image_b)])[0]

    def compose(self, image_a: Image.Image, image_b: Image.Image, region: str,
                settings: ExploreSettings | None = None, run: str | None = None,
                names: tuple[str, str] = ("A", "B")) -> ExploreResult:
        """B's feature map pasted into A's in ``region`` (a name or grid cells ``x0,y0,x1,y1``), reconstructed."""
        from featinv.analyses.compose import Composition

        settings = settings or self.settings
        run = self.analysis_run(run)

        def compute() -> tuple[str, list[list[Panel]], list[str]]:
            item = self._pair(Composition(regions=[region], progress=False, sampling=settings.sampling(),
                                          samples=self.samples), run,
                              image_a, image_b, names)
            grid = "x".join(map(str, item.grid))
            cells = item.regions[0].as_dict()["cells"]
            return f"{item.names[0]} + {item.names[1]} in {region}", item.display_rows(), [
                f"run {run}; feature grid {grid}; region cells x0,y0,x1,y1 = {cells} (outlined in yellow); seed "
                f"{item.seed}"]

        return self._answer("compose", (image_digest(image_a), image_digest(image_b), region, run), settings, compute)

    def interpolate(self, image_a: Image.Image, image_b: Image.Image, weight: float,
                    settings: ExploreSettings | None = None, run: str | None = None,
                    names: tuple[str, str] = ("A", "B")) -> ExploreResult:
        """The reconstruction of ``weight * f(A) + (1 - weight) * f(B)`` through :class:`Interpolation`."""
        from featinv.analyses.interpolation import Interpolation

        settings = settings or self.settings
        run = self.analysis_run(run)

        def compute() -> tuple[str, list[list[Panel]], list[str]]:
            item = self._pair(Interpolation(weights=[weight], progress=False, sampling=settings.sampling(),
                                            samples=self.samples), run,
                              image_a, image_b, names)
            return (f"{100 * weight:.0f}% {item.names[0]} + {100 * (1 - weight):.0f}% {item.names[1]}",
                    item.display_rows(), [f"run {run}; cosine of the mixed map vs its reconstruction "
                                          f"{item.cosine[0]:.3f} (A {item.cosine_a[0]:.3f}, B {item.cosine_b[0]:.3f})"])

        return self._answer("interpolate", (image_digest(image_a), image_digest(image_b), float(weight), run),
                            settings, compute)

    # ------------------------------------------------------------------------------------- export
    def export(self, path: str | os.PathLike[str] | None = None, title: str = "featinv explore session") -> Path:
        """The session so far as one self-contained HTML file (images embedded), via the demo's report code."""
        from featinv.report.html import InlineImage, Section, write_html_report

        if not self.history:
            raise FeatinvError("nothing to export yet; reconstruct, steer, compose or interpolate first")
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="featinv-explore-")) / "featinv-explore.html"
        runs = ", ".join(f"{name} ({model!r})" for name, model in self.models.items())
        sections = [Section("Session", [f"Runs: {runs}.",
                                        f"Concepts: {self.n_concepts or 'none'}."])]
        for index, result in enumerate(self.history, 1):
            sections.append(Section(f"{index}. {result.display_title()}", result.display_notes(),
                                    figures=[InlineImage(f"{index:03d}-{result.kind}.png", result._repr_png_())]))
        return write_html_report(path, title, sections)

