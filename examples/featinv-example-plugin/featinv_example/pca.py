"""A PCA concept decomposer written only against featinv's public Decomposer base class."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from featinv.concepts.base import Decomposer
from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl


class PCADecomposer(Decomposer):
    """Concepts = the top-K right singular vectors of the (uncentred) feature vectors.

    Uncentred, because a part must be a piece *of the feature vector* (parts sum to the input): the
    projection of ``f`` onto each direction is that concept's part, the rest is the residual.
    """

    name = "pca"

    def options(self) -> dict[str, Any]:
        return {"n_concepts": self.n_concepts, "seed": self.seed}

    def _min_samples(self) -> int:
        return self.n_concepts

    def _fit(self, x: Tensor) -> None:
        if self.n_concepts > x.shape[1]:
            raise FeatinvError(f"pca cannot find {self.n_concepts} directions in {x.shape[1]} channels; lower --n-concepts")
        _, singular, vh = torch.linalg.svd(x, full_matrices=False)
        self.components = vh[: self.n_concepts].clone()  # [K, C], orthonormal rows
        self.energy = (singular[: self.n_concepts] ** 2 / (singular**2).sum()).clone()

    def _concept_parts(self, x: Tensor) -> Tensor:
        coefficients = x.double() @ self.components.T.double()  # [N, K]
        return coefficients.T[:, :, None] * self.components.double()[:, None, :]  # [K, N, C]

    def _state(self) -> dict[str, Tensor]:
        return {"components": self.components, "energy": self.energy}

    def _load_state(self, tensors: dict[str, Tensor]) -> None:
        self.components = tensors["components"].double()
        self.energy = tensors["energy"].double()


@hookimpl
def register_decomposers(register: Register) -> None:
    register("pca", PCADecomposer, description="principal directions as one-dimensional concepts (example plugin)")
