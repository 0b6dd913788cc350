"""Multi-dimensional concept discovery (MCD; Vielhaben, Bluecher & Strodthoff, TMLR 2023).

Concepts are linear subspaces of feature space. Fitting: L2-normalise the feature vectors, cluster them
by sparse subspace clustering (elastic-net self-representation, outlier removal, spectral clustering; or
k-means, faster), and take one subspace per cluster from an uncentred SVD (linear subspaces pass through
the origin, so the cluster's mean direction must stay in it), its dimension the smallest that explains
``variance_threshold`` of the cluster's energy. The orthogonal complement of the union of the concept
subspaces is the residual. A feature vector is decomposed by solving for its coefficients in the combined
basis (concept bases + complement; minimum-norm least squares when that basis is over-complete), so the
concept parts plus the residual sum exactly to the vector.

With a classifier weight ``w``: global relevance ``||w_c||`` of each concept for the normalised weight,
local relevance ``<f_c, w>`` per position (these sum to ``<f, w>``), and completeness ``||P_union w||``.

SSC needs an ``N x N`` self-representation, so it runs on at most ``max_samples`` vectors (a seeded
random subsample); the remaining vectors are assigned to their closest subspace.

``mcd-reference`` fits as the authors' MCD-XAI code does (tau 1, 25% outliers with a refit, a centred PCA
basis per cluster with an estimated intrinsic dimension); ``mcd`` keeps featinv's earlier fitting.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featinv.concepts.base import Decomposer
from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl

CLUSTERINGS = ("ssc", "kmeans")
#: how a cluster becomes a subspace: "svd" (uncentred, energy threshold) or "pca" (the reference code's)
BASES = ("svd", "pca")


def elastic_net_self_representation(
    x: Tensor, gamma: float = 50.0, tau: float = 0.9, n_neighbors: int = 32, max_iter: int = 150, tol: float = 1e-5
) -> tuple[Tensor, Tensor]:
    """Sparse self-representation ``x_j ~ sum_i c_ji x_i`` (``c_jj = 0``) by an elastic net per vector.

    Solves ``min 1/2 ||x_j - c_j X||^2 + lam_j (tau ||c_j||_1 + (1 - tau)/2 ||c_j||^2)`` with
    ``lam_j = max_i |<x_i, x_j>| / gamma`` (``gamma > 1``; the penalty at which the solution would be zero,
    divided by gamma), restricted to each vector's ``n_neighbors`` most coherent vectors (an active set: the
    representation of a point in a subspace uses nearby points of that subspace). All vectors are solved at
    once by batched FISTA in float32. Returns ``(neighbor_index [n, m], coefficients [n, m])``.
    """
    x = x.float()
    n = x.shape[0]
    gram = x @ x.T
    coherence = gram.abs().fill_diagonal_(-1.0)  # never pick yourself
    m = max(1, min(n_neighbors, n - 1))
    index = coherence.topk(m, dim=1).indices  # [n, m]
    target = torch.gather(gram, 1, index)[:, :, None]  # [n, m, 1] = <x_i, x_j>
    lam = target.abs().amax(1, keepdim=True).clamp_min(1e-12) / gamma  # [n, 1, 1]
    # the ridge part of the penalty folds into the quadratic: gradient = (G + l2 I) c - b
    system = gram[index[:, :, None], index[:, None, :]] + (lam * (1.0 - tau)) * torch.eye(m, dtype=x.dtype)
    step = 1.0 / torch.linalg.eigvalsh(system)[:, -1:, None].clamp_min(1e-12)  # 1 / Lipschitz constant
    threshold = lam * tau * step
    coef = torch.zeros_like(target)
    momentum, t = coef, 1.0
    for iteration in range(max_iter):
        z = torch.addcmul(momentum, step, torch.baddbmm(target, system, momentum, alpha=1.0, beta=-1.0), value=-1.0)
        new = z - z.clamp(-threshold, threshold)  # soft threshold
        t_new = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        momentum = torch.lerp(coef, new, 1.0 + (t - 1.0) / t_new)
        done = iteration % 10 == 9 and float((new - coef).abs().max()) < tol
        coef, t = new, t_new
        if done:
            break
    coef = coef[:, :, 0]
    return index, coef


def sparse_subspace_clustering(
    x: Tensor, n_clusters: int, gamma: float = 50.0, tau: float = 0.9, n_neighbors: int = 32,
    outlier_fraction: float = 0.1, seed: int = 0, max_iter: int = 150, refit: bool = False,
) -> np.ndarray:
    """Cluster unit vectors ``x`` ``[n, C]`` into subspaces; outliers get label ``-1``.

    Outliers are the ``outlier_fraction`` of vectors with the largest l1 norm of their self-representation
    (a vector on no shared subspace needs many large coefficients). Spectral clustering then runs on the
    affinity ``(|C| + |C|^T) / 2`` of the rest, with rows of ``C`` l2-normalised; with ``refit`` (the
    reference code's default) the self-representation is computed again on the inliers alone first.
    """
    from sklearn.cluster import spectral_clustering

    n = x.shape[0]
    index, coef = elastic_net_self_representation(x, gamma, tau, n_neighbors, max_iter)
    l1 = coef.abs().sum(1)
    inlier = torch.ones(n, dtype=torch.bool)
    n_out = int(outlier_fraction * n)
    if n_out > 0:
        inlier[l1.topk(n_out).indices] = False
    inlier &= l1 > 0  # a vector nobody represents has no edges
    if int(inlier.sum()) < 2 * n_clusters:
        raise FeatinvError(
            f"sparse subspace clustering kept only {int(inlier.sum())} of {n} vectors, too few for "
            f"{n_clusters} concepts; lower n_concepts, lower outlier_fraction or use clustering='kmeans'"
        )
    kept = np.flatnonzero(inlier.numpy())
    if refit:
        index, coef = elastic_net_self_representation(x[torch.from_numpy(kept)], gamma, tau, n_neighbors, max_iter)
        affinity = _affinity(index, coef, torch.ones(len(kept), dtype=torch.bool))
    else:
        affinity = _affinity(index, coef, inlier)[kept][:, kept]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "graph is not fully connected": expected for separate subspaces
        labels_in = spectral_clustering(affinity, n_clusters=n_clusters, random_state=seed, assign_labels="kmeans")
    labels = np.full(n, -1, dtype=np.int64)
    labels[kept] = labels_in
    return labels


def _affinity(index: Tensor, coef: Tensor, inlier: Tensor) -> Any:
    """The symmetric sparse affinity ``(|C| + |C|^T) / 2`` between inliers (rows of ``C`` l2-normalised)."""
    from scipy import sparse

    n = index.shape[0]
    rows = torch.arange(n)[:, None].expand_as(index)
    values = coef.abs() / coef.norm(dim=1, keepdim=True).clamp_min(1e-12)
    keep = inlier[rows] & inlier[index] & (values > 0)
    matrix = sparse.csr_matrix((values[keep].numpy(), (rows[keep].numpy(), index[keep].numpy())), shape=(n, n))
    return 0.5 * (matrix + matrix.T)


def subspace_basis(x: Tensor, threshold: float, max_dim: int) -> Tensor:
    """Orthonormal rows spanning ``x`` ``[n, C]``: the smallest number explaining ``threshold`` of its energy."""
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    energy = s.pow(2).cumsum(0) / s.pow(2).sum().clamp_min(1e-30)
    dim = int((energy < threshold - 1e-12).sum()) + 1
    return vh[: max(1, min(dim, max_dim, vh.shape[0]))]


def intrinsic_dimension(x: Tensor, alpha: float = 0.05) -> int:
    """The reference's intrinsic dimension (scikit-dimension's ``lPCA``, Fukunaga-Olsen version): the number of
    principal variances of the centred ``x`` above ``alpha`` times the largest."""
    centred = x.double() - x.double().mean(0, keepdim=True)
    variances = torch.linalg.svdvals(centred).pow(2)
    return max(1, int((variances > alpha * variances[0]).sum())) if variances.numel() and variances[0] > 0 else 1


def pca_basis(x: Tensor, alpha: float, max_dim: int) -> Tensor:
    """The reference's concept basis: the leading principal directions of the *centred* cluster (sklearn's
    ``PCA().components_``), as many as :func:`intrinsic_dimension` estimates."""
    centred = x.double() - x.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[: max(1, min(intrinsic_dimension(x, alpha), max_dim, vh.shape[0]))]


class MCDDecomposer(Decomposer):
    """Concepts as linear subspaces (MCD); residual = the orthogonal complement of their union."""

    name = "mcd"

    def __init__(
        self,
        n_concepts: int = 5,
        clustering: str = "ssc",
        variance_threshold: float = 0.8,
        max_dim: int | None = None,
        max_samples: int = 2000,
        gamma: float = 50.0,
        tau: float = 0.9,
        n_neighbors: int = 32,
        outlier_fraction: float = 0.1,
        seed: int = 0,
        basis: str = "svd",
        refit: bool = False,
        id_alpha: float = 0.05,
    ) -> None:
        super().__init__(n_concepts, seed)
        if basis not in BASES:
            raise FeatinvError(f"unknown MCD basis {basis!r}; use one of {', '.join(BASES)}")
        if not 0.0 < id_alpha < 1.0:
            raise FeatinvError(f"id_alpha must be in (0, 1), got {id_alpha}")
        if clustering not in CLUSTERINGS:
            raise FeatinvError(f"unknown MCD clustering {clustering!r}; use one of {', '.join(CLUSTERINGS)}")
        if not 0.0 < variance_threshold <= 1.0:
            raise FeatinvError(f"variance_threshold must be in (0, 1], got {variance_threshold}")
        if not 0.0 <= outlier_fraction < 0.9:
            raise FeatinvError(f"outlier_fraction must be in [0, 0.9), got {outlier_fraction}")
        if gamma <= 1.0:
            raise FeatinvError(f"gamma must be > 1 (the self-representation would be all zero), got {gamma}")
        if not 0.0 < tau <= 1.0:
            raise FeatinvError(f"tau must be in (0, 1] (1 = pure lasso), got {tau}")
        if max_dim is not None and max_dim < 1:
            raise FeatinvError(f"max_dim must be a positive integer or None, got {max_dim}")
        if max_samples < 2 * n_concepts:
            raise FeatinvError(f"max_samples={max_samples} is too small for {n_concepts} concepts; use at least {2 * n_concepts}")
        self.clustering = clustering
        self.variance_threshold = float(variance_threshold)
        self.max_dim = max_dim
        self.max_samples = int(max_samples)
        self.gamma = float(gamma)
        self.tau = float(tau)
        self.n_neighbors = int(n_neighbors)
        self.outlier_fraction = float(outlier_fraction)
        self.basis = basis
        self.refit = bool(refit)
        self.id_alpha = float(id_alpha)
        self.bases: list[Tensor] = []
        self._complement = torch.empty(0)
        self._operators = torch.empty(0)
        self._fractions: list[float] = []

    def options(self) -> dict[str, Any]:
        return {
            **super().options(), "clustering": self.clustering, "variance_threshold": self.variance_threshold,
            "max_dim": self.max_dim, "max_samples": self.max_samples, "gamma": self.gamma, "tau": self.tau,
            "n_neighbors": self.n_neighbors, "outlier_fraction": self.outlier_fraction,
            "basis": self.basis, "refit": self.refit, "id_alpha": self.id_alpha,
        }

    def _default_max_dim(self, channels: int) -> int:
        return max(1, channels // (self.n_concepts + 1))  # room for a residual complement by default

    def _min_samples(self) -> int:
        return 2 * self.n_concepts

    @property
    def dims(self) -> list[int]:
        """Dimension of each concept subspace."""
        return [int(b.shape[0]) for b in self.bases]

    # ------------------------------------------------------------------ fitting
    def _fit(self, x: Tensor) -> None:
        n, c = x.shape
        k = self.n_concepts
        if k > c:
            raise FeatinvError(f"n_concepts={k} is larger than the {c} feature channels; MCD needs n_concepts <= {c}")
        norms = x.norm(dim=1)
        unit = x[norms > 1e-12 * norms.max().clamp_min(1e-30)]
        unit = unit / unit.norm(dim=1, keepdim=True)
        if unit.shape[0] < 2 * k:
            raise FeatinvError(f"only {unit.shape[0]} non-zero feature vectors; MCD with {k} concepts needs {2 * k}")
        generator = torch.Generator().manual_seed(self.seed)
        if unit.shape[0] > self.max_samples:
            sample = unit[torch.randperm(unit.shape[0], generator=generator)[: self.max_samples]]
        else:
            sample = unit
        labels = self._cluster(sample)
        max_dim = self.max_dim or self._default_max_dim(c)
        bases = []
        for concept in range(k):
            members = sample[torch.from_numpy(labels == concept)]
            if members.shape[0] == 0:
                raise FeatinvError(
                    f"clustering found fewer than {k} groups in {sample.shape[0]} feature vectors; lower n_concepts"
                )
            if self.basis == "pca":
                bases.append(pca_basis(members, self.id_alpha, max_dim))
            else:
                bases.append(subspace_basis(members, self.variance_threshold, max_dim))
        self._set_bases(bases)
        assigned = self.assign(unit)
        self._fractions = [float((assigned == i).double().mean()) for i in range(k)]

    def _cluster(self, x: Tensor) -> np.ndarray:
        if self.clustering == "kmeans":
            from sklearn.cluster import KMeans

            return KMeans(self.n_concepts, n_init=4, random_state=self.seed).fit(x.numpy()).labels_
        return sparse_subspace_clustering(
            x, self.n_concepts, gamma=self.gamma, tau=self.tau, n_neighbors=self.n_neighbors,
            outlier_fraction=self.outlier_fraction, seed=self.seed, refit=self.refit,
        )

    def _set_bases(self, bases: list[Tensor]) -> None:
        """Build the complement and the per-concept projection operators from the concept bases."""
        self.bases = [b.to(torch.float64) for b in bases]
        stacked = torch.cat(self.bases)  # [D, C]
        c = stacked.shape[1]
        _, s, vh = torch.linalg.svd(stacked, full_matrices=True)
        rank = int((s > s[0] * 1e-6).sum()) if s.numel() else 0
        self._complement = vh[rank:]  # [C - rank, C], orthonormal, orthogonal to every concept subspace
        pinv = torch.linalg.pinv(torch.cat([stacked, self._complement]))  # [C, D + C - rank]
        operators, start = [], 0
        for basis in self.bases:
            end = start + basis.shape[0]
            operators.append(pinv[:, start:end] @ basis)  # f @ op = coefficients of f in this subspace @ basis
            start = end
        self._operators = torch.stack(operators) if operators else torch.zeros(0, c, c, dtype=torch.float64)

    def assign(self, vectors: Tensor) -> Tensor:
        """Index of the concept subspace closest (smallest principal angle) to each vector ``[N, C]``."""
        x = torch.as_tensor(vectors, dtype=torch.float64)
        scores = torch.stack([(x @ b.T).pow(2).sum(1) for b in self.bases])
        return scores.argmax(0)

    # ------------------------------------------------------------------ decomposition
    def _concept_parts(self, x: Tensor) -> Tensor:
        return torch.einsum("nc,kcd->knd", x, self._operators)

    def _reconstruct(self, x: Tensor) -> Tensor:
        # the concept parts sum to the orthogonal projection onto their union (the complement is orthogonal)
        return x - (x @ self._complement.T) @ self._complement

    # ------------------------------------------------------------------ relevance
    def global_relevance(self) -> Tensor:
        """``[K+1]``: length of each concept's part (and the residual's) of the normalised classifier weight."""
        w = self._require_weight().double()
        w = (w / w.norm().clamp_min(1e-30))[None]
        parts = self._concept_parts(w)[:, 0]
        residual = w[0] - parts.sum(0)
        return torch.cat([parts.norm(dim=1), residual.norm()[None]]).float()

    def completeness(self) -> float:
        """Fraction ``||P_union w|| / ||w||`` of the classifier weight that lies in the concepts' union."""
        w = self._require_weight().double()[None]
        return float(self._reconstruct(w).norm() / w.norm().clamp_min(1e-30))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dims": self.dims, "complement_dim": int(self._complement.shape[0]),
                               "cluster_fractions": [round(f, 4) for f in self._fractions]}
        if self.classifier_weight is not None:
            out["completeness"] = round(self.completeness(), 4)
            out["global_relevance"] = [round(float(v), 4) for v in self.global_relevance()]
        return out

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, Tensor]:
        return {
            "bases": torch.cat(self.bases),
            "dims": torch.tensor(self.dims, dtype=torch.int64),
            "cluster_fractions": torch.tensor(self._fractions, dtype=torch.float64),
        }

    def _load_state(self, tensors: dict[str, Tensor]) -> None:
        dims = [int(d) for d in tensors["dims"]]
        if len(dims) != self.n_concepts or sum(dims) != tensors["bases"].shape[0]:
            raise ValueError(f"{len(dims)} subspaces with dims {dims} for {tensors['bases'].shape[0]} basis rows")
        self._set_bases(list(tensors["bases"].split(dims)))
        self._fractions = [float(v) for v in tensors["cluster_fractions"]]


class MCDReferenceDecomposer(MCDDecomposer):
    """MCD fitted as the authors' MCD-XAI code fits it: pure-lasso self-representation (tau 1.0), the 25%
    least representable vectors dropped and the representation refitted on the rest, and per cluster a
    centred PCA basis with the intrinsic dimension of scikit-dimension's ``lPCA`` (alpha 0.05), uncapped.

    Remaining differences from the reference: the self-representation is solved by FISTA on each vector's
    ``n_neighbors`` most coherent vectors (the reference runs LARS over all of them) on at most
    ``max_samples`` vectors; both keep every other option of :class:`MCDDecomposer`.
    """

    name = "mcd-reference"

    def __init__(self, n_concepts: int = 5, tau: float = 1.0, outlier_fraction: float = 0.25, refit: bool = True,
                 basis: str = "pca", max_dim: int | None = None, **options: Any) -> None:
        super().__init__(n_concepts, tau=tau, outlier_fraction=outlier_fraction, refit=refit, basis=basis,
                         max_dim=max_dim, **options)

    def _default_max_dim(self, channels: int) -> int:
        return channels  # the reference caps nothing


@hookimpl
def register_decomposers(register: Register) -> None:
    register("mcd", MCDDecomposer, description="multi-dimensional concept discovery: concepts as linear subspaces (SSC or k-means)")
    register("mcd-reference", MCDReferenceDecomposer,
             description="MCD fitted as the reference MCD-XAI code: tau 1, 25% outliers with refit, PCA + intrinsic dimension")
