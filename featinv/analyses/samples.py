"""Sampling feature maps for the analyses, with an optional cache of finished samples.

A sample depends only on (model, map, seed, sampling options): :meth:`FeatInv.reconstruct` never lets the
rest of a batch change it. An interactive session (``featinv explore``) asks for the same unchanged map and
seed again and again -- the unedited reconstruction behind every concept edit, the image the Reconstruct
panel just showed -- so a :class:`SampleCache` handed to the analyses returns those without sampling.
Without a cache nothing is kept and sampling is one batched call, as before.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from featinv.diffusion.model import FeatInv


class SamplingLike(Protocol):
    """What sampling needs of :class:`featinv.analyses.base.SamplingOptions` (which imports this module)."""

    def reconstruct_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``FeatInv.reconstruct`` (all but the seeds)."""
        ...


#: one sample's cache key: (model, map digest, seed, sampling options that change the image)
SampleKey = tuple[int, str, int, str]


def map_digest(feature_map: Tensor) -> str:
    """A digest of one map's exact values and shape (equal maps, bit for bit, share samples)."""
    data = feature_map.detach().float().cpu().contiguous()
    return hashlib.sha1(repr(tuple(data.shape)).encode() + data.numpy().tobytes()).hexdigest()


class SampleCache:
    """Finished samples (image ``[3, R, R]`` and fidelity cosine) by (model, map, seed, sampling options);
    the least recently used are dropped beyond ``capacity``. The models are kept referenced, so a key's model
    identity cannot be reused by another model while its samples are held."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = int(capacity)
        self._samples: OrderedDict[SampleKey, tuple[Tensor, float]] = OrderedDict()
        self._models: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._samples)

    def key(self, model: FeatInv, feature_map: Tensor, seed: int, sampling: SamplingLike) -> SampleKey:
        """The key of one sample; the batch size is left out (it never changes an image)."""
        self._models[id(model)] = model
        options = {k: v for k, v in sampling.reconstruct_kwargs().items() if k != "batch_size"}
        return id(model), map_digest(feature_map), int(seed), repr(sorted(options.items()))

    def get(self, key: SampleKey) -> tuple[Tensor, float] | None:
        """The sample (image, fidelity) held under ``key`` (now the most recently used), or None."""
        if key not in self._samples:
            return None
        self._samples.move_to_end(key)
        return self._samples[key]

    def put(self, key: SampleKey, image: Tensor, fidelity: float) -> None:
        """Keep a finished sample, dropping the least recently used beyond the capacity."""
        self._samples[key] = (image, float(fidelity))
        while len(self._samples) > self.capacity:
            self._samples.popitem(last=False)

    def clear(self) -> None:
        """Forget every sample (a benchmark times cold requests this way)."""
        self._samples.clear()
        self._models.clear()


def sample_maps(model: FeatInv, features: Tensor, seeds: Sequence[int], sampling: SamplingLike,
                show_progress: bool, cache: SampleCache | None = None) -> tuple[Tensor, list[float]]:
    """Images ``[N, 3, R, R]`` in [0, 1] and fidelity cosines for ``features`` with one seed per map.

    With a ``cache``, the (map, seed) pairs it holds are taken from it and only the others are sampled (in
    one batched call); the new samples are added to it.
    """
    keys = [cache.key(model, features[i], seed, sampling) for i, seed in enumerate(seeds)] if cache is not None else []
    found = [cache.get(key) for key in keys] if cache is not None else [None] * len(seeds)
    missing = [i for i, hit in enumerate(found) if hit is None]
    if missing:
        with torch.no_grad():
            maps = features if len(missing) == len(seeds) else features[missing]
            result = model.reconstruct(features=maps, seeds=[int(seeds[i]) for i in missing],
                                       progress=show_progress, **sampling.reconstruct_kwargs())
        images = result.images.detach().float().cpu()
        for row, i in enumerate(missing):
            found[i] = (images[row], float(result.fidelity[row]))
            if cache is not None:
                cache.put(keys[i], *found[i])
    pairs = [hit for hit in found if hit is not None]
    return torch.stack([image for image, _ in pairs]), [score for _, score in pairs]
