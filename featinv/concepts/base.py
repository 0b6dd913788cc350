"""Concept decomposition of feature maps: per-concept parts plus a residual that sum exactly to the input.

A :class:`Decomposer` is fitted on feature vectors (one per feature-map position, ``[N, C]``) and then
splits any feature map ``[B, C, H, W]`` into a :class:`Decomposition` whose ``parts`` are the K concept
parts and one residual (what no concept explains). The residual is always computed as
``input - sum(concept parts)``, so editing one part and summing gives a feature map that differs from the
original only in that concept -- what concept steering (FeatInv-Viz) needs.

Methods are plugins (``register_decomposers``): ``mcd`` (multi-dimensional concept discovery, concepts as
linear subspaces), ``nmf`` (non-negative / semi-NMF atoms) and ``sae`` (TopK sparse autoencoder atoms).
This module holds the contract and the saved format; fitting on a backbone's features is
:mod:`featinv.concepts.fit`, activation maps and their figure :mod:`featinv.concepts.maps`.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from featinv.errors import FeatinvError
from featinv.registry import create_decomposer

CONFIG_FILE = "config.json"
STATE_FILE = "concepts.safetensors"
FORMAT = "featinv-concepts"
FORMAT_VERSION = 1
_CHUNK = 8192  # positions per block when reconstructing many vectors (bounds [K, chunk, C] memory)


@contextlib.contextmanager
def solver_threads(n: int = 1) -> Iterator[None]:
    """Run torch on at most ``n`` threads inside the block (restored afterwards).

    The decomposers' solvers are loops of many small tensor ops (batched FISTA, SAE steps); for those,
    intra-op threading costs more in synchronisation than it gains, and on a busy machine it is many
    times slower (measured 27 s vs 0.4 s for a small SAE fit on 2 loaded cores).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Decomposition:
    """A feature map split into concept parts and a residual.

    ``parts[:K]`` are the concepts, ``parts[K]`` the residual; ``parts.sum(0)`` equals the input up to
    float rounding. ``input`` is the decomposed map itself (when known): edits are made on it, so an
    unedited map is the input bit for bit and reconstructs to the very image of the input.
    """

    parts: Tensor  # [K+1, B, C, H, W]
    input: Tensor | None = None  # [B, C, H, W]

    @property
    def n_concepts(self) -> int:
        return self.parts.shape[0] - 1

    @property
    def concepts(self) -> Tensor:
        """``[K, B, C, H, W]`` -- the concept parts without the residual."""
        return self.parts[:-1]

    @property
    def residual(self) -> Tensor:
        """``[B, C, H, W]`` -- the part of the input that no concept explains."""
        return self.parts[-1]

    def total(self) -> Tensor:
        """The input feature map (the sum of all parts, exact when the input is known)."""
        return self.input if self.input is not None else self.parts.sum(0)

    def concept_maps(self, include_residual: bool = False) -> Tensor:
        """``[K, B, H, W]`` (``[K+1, ...]`` with the residual): ``|part|^2`` per position.

        This is the coarse concept activation map; upsample it bilinearly to overlay it on an image.
        """
        parts = self.parts if include_residual else self.concepts
        return parts.pow(2).sum(2)

    def edited(self, concept: int, factor: float) -> Tensor:
        """The feature map with part ``concept`` scaled by ``factor`` and every other part unchanged.

        ``concept`` is 0..K-1, or K for the residual.
        """
        if isinstance(concept, bool) or not 0 <= concept <= self.n_concepts:
            raise FeatinvError(
                f"concept {concept} does not exist; choose 0..{self.n_concepts - 1} (or {self.n_concepts} for the "
                "residual)"
            )
        if factor == 1.0:  # nothing changes: the unedited map, bit for bit
            return self.total().clone()
        return self.total() + (factor - 1.0) * self.parts[concept]

    def relevance(self, weight: Tensor) -> Tensor:
        """``[K+1, B, H, W]`` local relevance ``<part, w>`` of every part for a linear read-out ``w`` ``[C]``.

        Because the parts sum to the input, the relevances sum to ``<f, w>`` at every position.
        """
        weight = torch.as_tensor(weight, dtype=self.parts.dtype, device=self.parts.device).reshape(-1)
        if weight.numel() != self.parts.shape[2]:
            raise FeatinvError(
                f"classifier weight has {weight.numel()} entries but the feature map has {self.parts.shape[2]} "
                "channels; pass the weight row of a linear classifier on this layer"
            )
        return torch.einsum("kbchw,c->kbhw", self.parts, weight)


def _as_matrix(vectors: Any, what: str = "feature vectors") -> Tensor:
    """Validate ``[N, C]`` finite real data and return it as a float64 CPU tensor (numerics need it)."""
    tensor = torch.as_tensor(vectors)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise FeatinvError(
            f"{what} must be a non-empty [N, C] matrix, got shape {tuple(tensor.shape)}; flatten feature maps "
            "with featinv.concepts.base.feature_vectors(fmap)"
        )
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise FeatinvError(f"{what} must be real numbers, got {tensor.dtype}; pass float features")
    tensor = tensor.detach().to("cpu", torch.float64)
    if not torch.isfinite(tensor).all():
        raise FeatinvError(f"{what} contain NaN or infinite values; check the backbone output or the input images")
    return tensor


def feature_vectors(fmap: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B*H*W, C]``: one vector per feature-map position (the unit concepts act on)."""
    if fmap.ndim != 4:
        raise FeatinvError(f"a feature map must be [B, C, H, W], got shape {tuple(fmap.shape)}")
    return fmap.permute(0, 2, 3, 1).reshape(-1, fmap.shape[1])


class Decomposer(ABC):
    """Base class of the concept decomposers; subclass it to add one (register it with ``register_decomposers``).

    The contract:

    * ``name`` (class attribute, required): the registered name. :meth:`save` writes it to config.json as
      ``"method"`` and :func:`load_decomposer` rebuilds the class from the registry by it, so it must equal
      the name the plugin registers.
    * ``__init__(n_concepts=5, seed=0, **options)``: call ``super().__init__(n_concepts, seed)``; the
      registry's factory is called as ``factory(n_concepts=K, **options)`` (``--option KEY=VALUE``).
    * :meth:`options`: override it to return ``{**super().options(), "your_option": ...}``: every constructor
      argument that defines the decomposer, saved in config.json and passed back to the constructor on load.
    * Abstract methods: ``_fit(x)`` learns from float64 vectors ``[N, C]``; ``_concept_parts(x)`` returns
      ``[K, N, C]``, the part of each vector each concept explains; ``_state()`` returns the fitted tensors
      (a ``dict[str, Tensor]``) and ``_load_state(tensors)`` restores them. Optional: ``_reconstruct(x)``
      (when cheaper than summing the parts), ``_min_samples()``, :meth:`summary`.

    The base class does the rest, so every method behaves the same at the edges: input validation,
    the exact residual (``input - sum(parts)``), chunking of large inputs, relevances, and persistence:
    :meth:`save` writes ``config.json`` + ``concepts.safetensors`` atomically, :meth:`load` /
    :func:`load_decomposer` read any method's folder back.
    """

    name: ClassVar[str] = ""
    #: show progress bars during long fits (not saved; set False in tests and batch jobs)
    progress: bool = True

    def __init__(self, n_concepts: int = 5, seed: int = 0) -> None:
        if isinstance(n_concepts, bool) or not isinstance(n_concepts, int) or n_concepts < 1:
            raise FeatinvError(f"n_concepts must be a positive integer, got {n_concepts!r}; pass e.g. --n-concepts 5")
        self.n_concepts = n_concepts
        self.seed = int(seed)
        self._channels: int | None = None
        self.classifier_weight: Tensor | None = None
        #: where the fitting data came from (backbone spec, layer, ...), saved with the decomposer
        self.meta: dict[str, Any] = {}

    # ----------------------------------------------------------------- subclass interface
    def options(self) -> dict[str, Any]:
        """Constructor arguments that define this decomposer (saved in config.json)."""
        return {"n_concepts": self.n_concepts, "seed": self.seed}

    def _min_samples(self) -> int:
        return self.n_concepts

    @abstractmethod
    def _fit(self, x: Tensor) -> None:
        """Learn the concepts from float64 vectors ``[N, C]``."""

    @abstractmethod
    def _concept_parts(self, x: Tensor) -> Tensor:
        """``[K, N, C]``: the part of each vector that each concept explains."""

    def _reconstruct(self, x: Tensor) -> Tensor:
        """Sum of the concept parts for ``x`` ``[N, C]`` (override when cheaper than summing parts)."""
        return self._concept_parts(x).sum(0)

    @abstractmethod
    def _state(self) -> dict[str, Tensor]:
        """The fitted tensors to save."""

    @abstractmethod
    def _load_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore from the tensors written by :meth:`_state`."""

    # ----------------------------------------------------------------- public API
    @property
    def fitted(self) -> bool:
        return self._channels is not None

    @property
    def channels(self) -> int:
        """Number of feature channels the decomposer was fitted on."""
        if self._channels is None:
            raise FeatinvError(f"the {self.name} decomposer is not fitted yet; call .fit(vectors) or load a fitted one")
        return self._channels

    def fit(self, vectors: Tensor, classifier_weight: Tensor | None = None) -> Decomposer:
        """Fit on feature vectors ``[N, C]``; ``classifier_weight`` ``[C]`` (optional) enables relevances."""
        x = _as_matrix(vectors)
        n, c = x.shape
        need = self._min_samples()
        if n < need:
            raise FeatinvError(
                f"{self.name} with n_concepts={self.n_concepts} needs at least {need} feature vectors but got {n}; "
                "lower n_concepts or fit on more images"
            )
        weight = None
        if classifier_weight is not None:
            weight = _as_matrix(torch.as_tensor(classifier_weight).reshape(1, -1), "classifier weight")[0]
            if weight.numel() != c:
                raise FeatinvError(
                    f"classifier weight has {weight.numel()} entries but the vectors have {c} channels; pass the "
                    "weight row of a linear classifier that reads this layer"
                )
        if bool((x == x[0]).all()):
            raise FeatinvError(f"all {n} feature vectors are the same, so there is nothing to decompose; check the "
                               "backbone weights (--weights) and the images")
        with torch.no_grad(), solver_threads():
            self._fit(x)
        broken = [k for k, t in self._state().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if broken:
            raise FeatinvError(f"fitting {self.name} gave NaN or infinite values ({', '.join(broken)}), so nothing is "
                               "saved; check the feature scale (e.g. the backbone weights) or fit fewer concepts")
        self._channels = c
        self.classifier_weight = None if weight is None else weight.float()
        return self

    def check_input(self, fmap: Tensor) -> None:
        """Refuse a feature map whose shape or channel count does not fit this decomposer."""
        channels = self.channels
        if not isinstance(fmap, Tensor) or fmap.ndim != 4:
            shape = tuple(fmap.shape) if isinstance(fmap, Tensor) else type(fmap).__name__
            raise FeatinvError(f"decompose needs a [B, C, H, W] feature map, got {shape}")
        if fmap.shape[1] != channels:
            source = ""
            if self.meta.get("backbone"):
                source = f" ({self.meta['backbone']} layer {self.meta.get('layer')})"
            raise FeatinvError(
                f"feature map has {fmap.shape[1]} channels but the {self.name} decomposer was fitted on {channels}"
                f"{source}; use features of the layer it was fitted on or refit it"
            )

    def decompose(self, fmap: Tensor) -> Decomposition:
        """Split ``fmap`` ``[B, C, H, W]`` into K concept parts plus the residual (exact sum)."""
        self.check_input(fmap)
        b, c, h, w = fmap.shape
        x = _as_matrix(feature_vectors(fmap), "feature map")
        with torch.no_grad(), solver_threads():
            concepts = torch.cat([self._concept_parts(chunk) for chunk in x.split(_CHUNK)], dim=1)
        concepts = concepts.to(fmap.dtype if fmap.is_floating_point() else torch.float32)
        original = fmap.detach().to("cpu", concepts.dtype)
        concepts = concepts.reshape(self.n_concepts, b, h, w, c).permute(0, 1, 4, 2, 3)
        residual = original - concepts.sum(0)
        return Decomposition(torch.cat([concepts, residual[None]]).to(fmap.device), input=original.to(fmap.device))

    def reconstruct(self, vectors: Tensor) -> Tensor:
        """``[N, C]``: what the concepts together explain of each vector (input minus residual)."""
        x = _as_matrix(vectors)
        self._check_vector_channels(x)
        with torch.no_grad(), solver_threads():
            return torch.cat([self._reconstruct(chunk) for chunk in x.split(_CHUNK)]).float()

    def relative_error(self, vectors: Tensor) -> float:
        """``||residual||^2 / ||x||^2`` over ``vectors`` ``[N, C]``: the energy no concept explains."""
        x = _as_matrix(vectors)
        residual = x - self.reconstruct(x).double()
        return float(residual.pow(2).sum() / x.pow(2).sum().clamp_min(1e-30))

    def local_relevance(self, decomposition: Decomposition) -> Tensor:
        """``[K+1, B, H, W]``: ``<part, w>`` with the stored classifier weight; sums to ``<f, w>``."""
        return decomposition.relevance(self._require_weight())

    def _require_weight(self) -> Tensor:
        if self.classifier_weight is None:
            raise FeatinvError(
                "no classifier weight is stored with this decomposer; fit it with classifier_weight=W[class] "
                "(the linear classifier row for the class of interest)"
            )
        return self.classifier_weight

    def _check_vector_channels(self, x: Tensor) -> None:
        if x.shape[1] != self.channels:
            raise FeatinvError(
                f"vectors have {x.shape[1]} channels but the {self.name} decomposer was fitted on {self.channels}; "
                "use features of the layer it was fitted on or refit it"
            )

    def check_backbone(self, spec: str, layer: str | None, channels: int) -> None:
        """Refuse a backbone/layer whose features this decomposer was not fitted on."""
        fitted_spec, fitted_layer = self.meta.get("backbone"), self.meta.get("layer")
        if channels != self.channels:
            raise FeatinvError(
                f"{spec} layer {layer} has {channels} channels but these concepts were fitted on {self.channels}"
                f"{f' ({fitted_spec} layer {fitted_layer})' if fitted_spec else ''}; use that backbone/layer or refit"
            )
        if fitted_spec and (fitted_spec != spec or (fitted_layer and layer and fitted_layer != layer)):
            raise FeatinvError(
                f"these concepts were fitted on {fitted_spec} layer {fitted_layer}, not {spec} layer {layer}; use "
                "the same backbone and layer or refit the concepts"
            )

    # ----------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``concepts.safetensors`` to ``directory`` atomically."""
        from featinv.io import atomic_dir, save_safetensors, write_json

        state = dict(self._state())
        if self.classifier_weight is not None:
            state["classifier_weight"] = self.classifier_weight
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "method": self.name,
            "options": self.options(),
            "channels": self.channels,
            "n_concepts": self.n_concepts,
            "summary": self.summary(),
            "meta": self.meta,
        }
        directory = Path(directory)
        with atomic_dir(directory, kind="concepts") as tmp:
            save_safetensors(state, tmp / STATE_FILE, metadata={"method": self.name})
            write_json(tmp / CONFIG_FILE, config)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Decomposer:
        """Load a decomposer saved with :meth:`save` (any method; the class is chosen from config.json)."""
        return load_decomposer(directory)

    def summary(self) -> dict[str, Any]:
        """A few numbers describing the fitted concepts (shown by the CLI, saved in config.json)."""
        return {}

    def __repr__(self) -> str:
        fitted = f"channels={self._channels}" if self.fitted else "unfitted"
        return f"{type(self).__name__}(n_concepts={self.n_concepts}, {fitted})"


def load_decomposer(directory: str | os.PathLike[str]) -> Decomposer:
    """Load a fitted decomposer folder written by :meth:`Decomposer.save`."""
    from featinv.io import load_safetensors, read_json

    directory = Path(directory)
    if not directory.is_dir():
        raise FeatinvError(f"concepts folder {directory} does not exist; fit one with `featinv concepts fit`")
    config = read_json(directory / CONFIG_FILE, what="concepts config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise FeatinvError(f"{directory} is not a featinv concepts folder; pass a folder written by `featinv concepts fit`")
    if config.get("version", 0) > FORMAT_VERSION:
        raise FeatinvError(f"{directory} was written by a newer featinv (format {config['version']}); upgrade featinv")
    try:
        method, options, channels = config["method"], dict(config["options"]), int(config["channels"])
    except (KeyError, TypeError, ValueError):
        raise FeatinvError(f"concepts config in {directory} is incomplete; refit the concepts") from None
    tensors = load_safetensors(directory / STATE_FILE)
    decomposer = create_decomposer(method, **options)
    weight = tensors.pop("classifier_weight", None)
    try:
        decomposer._load_state(tensors)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise FeatinvError(f"concepts state in {directory} does not match its config ({exc}); refit the concepts") from None
    decomposer._channels = channels
    decomposer.classifier_weight = weight
    decomposer.meta = dict(config.get("meta") or {})
    return decomposer
