"""Built-in concept decomposers: ``mcd`` (linear subspaces), ``nmf`` (non-negative / semi-NMF atoms) and
``sae`` (TopK sparse-autoencoder atoms). Registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featinv.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    from featinv.concepts.base import Decomposer


@hookimpl
def register_decomposers(register: Register) -> None:
    # imported here so that listing plugins does not import scikit-learn
    def mcd(**options: Any) -> Decomposer:
        from featinv.plugins.decomposers.mcd import MCDDecomposer

        return MCDDecomposer(**options)

    def nmf(**options: Any) -> Decomposer:
        from featinv.plugins.decomposers.nmf import NMFDecomposer

        return NMFDecomposer(**options)

    def sae(**options: Any) -> Decomposer:
        from featinv.plugins.decomposers.sae import TopKSAEDecomposer

        return TopKSAEDecomposer(**options)

    register("mcd", mcd, description="multi-dimensional concept discovery: concepts as linear subspaces (SSC or k-means)")
    register("nmf", nmf, description="NMF atoms (semi-NMF for features with negative values)")
    register("sae", sae, description="TopK sparse autoencoder: concepts as dictionary atoms")
