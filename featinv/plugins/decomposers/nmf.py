"""Concepts as NMF atoms: each position's feature vector ~ sum_k h_k w_k with activations h_k >= 0.

Non-negative features (e.g. after a ReLU) are factorised with scikit-learn's NMF, so atoms and
activations are both non-negative. Many layers (residual-block outputs, projections) also take negative
values; NMF is undefined there, and clipping or shifting would change the very feature map we decompose.
For such data this decomposer uses **semi-NMF** (Ding, Li & Jordan, 2010): the atoms may have any sign,
only the activations stay non-negative, so a concept is still "present (h > 0) or absent" at a position.
The variant used is recorded (``summary()["variant"]``).

Decomposing solves the non-negative least-squares problem ``min_{h >= 0} ||f - h W||`` per position
(batched projected FISTA); the residual is ``f - h W``, so the parts sum exactly to the input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from featinv.concepts.base import Decomposer, solver_threads
from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl


def nonnegative_codes(x: Tensor, atoms: Tensor, max_iter: int = 500, tol: float = 1e-7) -> Tensor:
    """``[N, K]`` non-negative ``h`` minimising ``||x - h atoms||^2`` for every row of ``x`` (projected FISTA)."""
    gram = atoms @ atoms.T  # [K, K]
    target = x @ atoms.T  # [N, K]
    lipschitz = float(torch.linalg.eigvalsh(gram)[-1].clamp_min(1e-12))
    codes = (target @ torch.linalg.pinv(gram)).clamp_min(0.0)  # least-squares start, projected
    momentum, t = codes.clone(), 1.0
    scale = target.abs().max().clamp_min(1e-30)
    for _ in range(max_iter):
        new = (momentum - (momentum @ gram - target) / lipschitz).clamp_min(0.0)
        t_new = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        momentum = new + ((t - 1.0) / t_new) * (new - codes)
        change = (new - codes).abs().max() / scale
        codes, t = new, t_new
        if change < tol:
            break
    return codes


def semi_nmf(x: Tensor, k: int, max_iter: int = 300, seed: int = 0, tol: float = 1e-6) -> Tensor:
    """Atoms ``W`` ``[K, C]`` (any sign) with ``x ~ H W``, ``H >= 0`` (Ding et al.'s multiplicative updates).

    Initialised from k-means cluster indicators (+0.2) as the paper recommends.
    """
    from sklearn.cluster import KMeans

    labels = KMeans(k, n_init=4, random_state=seed).fit(x.numpy()).labels_
    h = torch.full((x.shape[0], k), 0.2, dtype=x.dtype)
    h[torch.arange(x.shape[0]), torch.from_numpy(labels).long()] += 1.0
    eps = 1e-12
    previous = float("inf")
    for step in range(max_iter):
        w = torch.linalg.lstsq(h, x).solution  # [K, C] least squares given the activations
        a, b = x @ w.T, w @ w.T
        a_pos, a_neg = a.clamp_min(0.0), (-a).clamp_min(0.0)
        b_pos, b_neg = b.clamp_min(0.0), (-b).clamp_min(0.0)
        h = h * ((a_pos + h @ b_neg) / (a_neg + h @ b_pos + eps)).sqrt()
        if step % 10 == 9:
            error = float((x - h @ w).pow(2).sum())
            if previous - error <= tol * previous:
                break
            previous = error
    return torch.linalg.lstsq(h, x).solution


class NMFDecomposer(Decomposer):
    """Concepts as (semi-)NMF atoms; residual = input - reconstruction."""

    name = "nmf"

    def __init__(self, n_concepts: int = 5, max_iter: int = 300, seed: int = 0) -> None:
        super().__init__(n_concepts, seed)
        if max_iter < 1:
            raise FeatinvError(f"max_iter must be a positive integer, got {max_iter}")
        self.max_iter = int(max_iter)
        self.atoms = torch.empty(0)
        self.nonnegative = True

    def options(self) -> dict[str, Any]:
        return {**super().options(), "max_iter": self.max_iter}

    @property
    def variant(self) -> str:
        """``nmf`` when fitted on non-negative features, ``semi-nmf`` otherwise."""
        return "nmf" if self.nonnegative else "semi-nmf"

    def _fit(self, x: Tensor) -> None:
        self.nonnegative = bool((x >= 0).all())
        if self.nonnegative:
            import warnings

            from sklearn.decomposition import NMF

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the atoms are still usable
                model = NMF(self.n_concepts, init="nndsvda", max_iter=self.max_iter, random_state=self.seed)
                model.fit(x.numpy())
            atoms = torch.from_numpy(model.components_).to(torch.float64)
        else:
            atoms = semi_nmf(x, self.n_concepts, self.max_iter, self.seed)
        norms = atoms.norm(dim=1, keepdim=True)
        # unit atoms make activations comparable across concepts; an all-zero atom (rank-deficient data) stays 0
        self.atoms = torch.where(norms > 1e-12, atoms / norms.clamp_min(1e-12), torch.zeros_like(atoms))

    def encode(self, vectors: Tensor) -> Tensor:
        """``[N, K]`` non-negative concept activations of feature vectors ``[N, C]``."""
        x = torch.as_tensor(vectors, dtype=torch.float64)
        self._check_vector_channels(x)
        with solver_threads():
            return nonnegative_codes(x, self.atoms).float()

    def _concept_parts(self, x: Tensor) -> Tensor:
        codes = nonnegative_codes(x, self.atoms)
        return codes.T[:, :, None] * self.atoms[:, None, :]

    def _reconstruct(self, x: Tensor) -> Tensor:
        return nonnegative_codes(x, self.atoms) @ self.atoms

    def summary(self) -> dict[str, Any]:
        return {"variant": self.variant}

    def _state(self) -> dict[str, Tensor]:
        return {"atoms": self.atoms, "nonnegative": torch.tensor([self.nonnegative])}

    def _load_state(self, tensors: dict[str, Tensor]) -> None:
        atoms = tensors["atoms"].to(torch.float64)
        if atoms.shape[0] != self.n_concepts:
            raise ValueError(f"{atoms.shape[0]} atoms for n_concepts={self.n_concepts}")
        self.atoms = atoms
        self.nonnegative = bool(tensors["nonnegative"].item())


@hookimpl
def register_decomposers(register: Register) -> None:
    register("nmf", NMFDecomposer, description="NMF atoms (semi-NMF for features with negative values)")
