"""Concepts as the dictionary atoms of a TopK sparse autoencoder (Gao et al., 2024, "Scaling and evaluating
sparse autoencoders").

Encoder ``pre = x W_enc + b_enc``; the code keeps the ``k`` largest pre-activations of each vector and
zeroes the rest, so every position uses exactly ``k`` atoms (the values are kept as they are, rather than
passed through a ReLU, so no position is left with fewer than ``k`` when few pre-activations are
positive). Decoder ``x_hat = z W_dec`` with unit-norm atom rows (renormalised after every step) and *no*
decoder bias: a bias would be a part of the reconstruction that belongs to no concept, whereas here the
concept parts ``z_k * W_dec[k]`` are the whole reconstruction and the residual is exactly
``input - reconstruction``. An auxiliary loss (AuxK) lets latents that have not fired for ``dead_steps``
steps reconstruct the main residual, which revives dead latents.

Inputs are divided by their mean norm before training (the scale is saved), so the defaults work for any
layer's feature magnitude.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from featinv.concepts.base import Decomposer
from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl


def topk_codes(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries of each row of ``pre`` and zero the rest."""
    values, index = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, index, values)


class TopKSAEDecomposer(Decomposer):
    """Concepts as TopK-SAE dictionary atoms; residual = input - reconstruction."""

    name = "sae"

    def __init__(
        self,
        n_concepts: int = 16,
        k: int | None = None,
        steps: int = 1500,
        batch_size: int = 256,
        lr: float = 2e-3,
        aux_k: int | None = None,
        aux_coef: float = 1.0 / 32.0,
        dead_steps: int = 100,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__(n_concepts, seed)
        if k is None:
            k = min(n_concepts, max(1, round(math.sqrt(n_concepts))))  # ~sqrt(K) active atoms per position
        if not 1 <= k <= n_concepts:
            raise FeatinvError(f"k={k} active atoms must be between 1 and n_concepts={n_concepts}; lower k")
        if steps < 1 or batch_size < 1 or lr <= 0 or dead_steps < 1 or aux_coef < 0:
            raise FeatinvError("steps, batch_size, lr and dead_steps must be positive and aux_coef >= 0")
        self.k = int(k)
        self.steps = int(steps)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.aux_k = int(aux_k) if aux_k is not None else max(1, min(n_concepts // 2, 4 * self.k))
        self.aux_coef = float(aux_coef)
        self.dead_steps = int(dead_steps)
        self.progress = progress
        self.encoder = torch.empty(0)  # [C, K]
        self.encoder_bias = torch.empty(0)  # [K]
        self.decoder = torch.empty(0)  # [K, C], unit rows
        self.scale = 1.0
        self.final_loss = float("nan")
        self.dead_fraction = 0.0

    def options(self) -> dict[str, Any]:
        return {
            **super().options(), "k": self.k, "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr,
            "aux_k": self.aux_k, "aux_coef": self.aux_coef, "dead_steps": self.dead_steps,
        }

    def _fit(self, x: Tensor) -> None:
        from featinv.progress import progress

        generator = torch.Generator().manual_seed(self.seed)
        data = x.float()
        self.scale = float(data.norm(dim=1).mean().clamp_min(1e-12))
        data = data / self.scale
        n, c = data.shape
        k_atoms = self.n_concepts
        # atoms start at random data vectors (plus a little noise so duplicates separate)
        start = data[torch.randperm(n, generator=generator)[:k_atoms]]
        start = start + 0.1 * torch.randn(start.shape, generator=generator) / math.sqrt(c)
        decoder = torch.nn.Parameter(start / start.norm(dim=1, keepdim=True).clamp_min(1e-12))
        encoder = torch.nn.Parameter(decoder.detach().T.clone())
        bias = torch.nn.Parameter(torch.zeros(k_atoms))
        optimizer = torch.optim.Adam([encoder, bias, decoder], lr=self.lr)
        since_fired = torch.zeros(k_atoms, dtype=torch.long)
        aux_k = min(self.aux_k, k_atoms)
        with torch.enable_grad():
            for _ in progress(range(self.steps), description=f"training TopK SAE ({k_atoms} atoms)",
                              enabled=self.progress):
                batch = data[torch.randint(n, (min(self.batch_size, n),), generator=generator)]
                pre = batch @ encoder + bias
                codes = topk_codes(pre, self.k)
                error = batch - codes @ decoder
                energy = batch.pow(2).sum(1).mean().clamp_min(1e-12)
                loss = reconstruction = error.pow(2).sum(1).mean() / energy
                fired = (codes != 0).any(0)
                since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + 1)
                dead = since_fired > self.dead_steps
                if self.aux_coef > 0 and bool(dead.any()):
                    aux_codes = topk_codes(pre.masked_fill(~dead, float("-inf")), min(aux_k, int(dead.sum())))
                    aux_codes = torch.nan_to_num(aux_codes, neginf=0.0)
                    target = error.detach()
                    aux = (target - aux_codes @ decoder).pow(2).sum(1).mean()
                    loss = loss + self.aux_coef * aux / target.pow(2).sum(1).mean().clamp_min(1e-12)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    decoder /= decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.encoder = encoder.detach().double()
        self.encoder_bias = bias.detach().double()
        self.decoder = decoder.detach().double()
        self.final_loss = float(reconstruction.detach())  # normalised MSE of the last batch (without AuxK)
        self.dead_fraction = float((since_fired > self.dead_steps).float().mean())

    def encode(self, vectors: Tensor) -> Tensor:
        """``[N, K]`` codes (exactly ``k`` non-zeros per row) in feature units: part_k = code_k * atom_k."""
        x = torch.as_tensor(vectors, dtype=torch.float64)
        self._check_vector_channels(x)
        return self._codes(x).float()

    def _codes(self, x: Tensor) -> Tensor:
        return topk_codes((x / self.scale) @ self.encoder + self.encoder_bias, self.k) * self.scale

    def _concept_parts(self, x: Tensor) -> Tensor:
        return self._codes(x).T[:, :, None] * self.decoder[:, None, :]

    def _reconstruct(self, x: Tensor) -> Tensor:
        return self._codes(x) @ self.decoder

    @property
    def atoms(self) -> Tensor:
        """``[K, C]`` unit-norm dictionary atoms (the concept directions)."""
        return self.decoder.float()

    def summary(self) -> dict[str, Any]:
        return {"k": self.k, "final_loss": round(self.final_loss, 5), "dead_fraction": round(self.dead_fraction, 4)}

    def _state(self) -> dict[str, Tensor]:
        return {
            "encoder": self.encoder, "encoder_bias": self.encoder_bias, "decoder": self.decoder,
            "scale": torch.tensor([self.scale], dtype=torch.float64),
        }

    def _load_state(self, tensors: dict[str, Tensor]) -> None:
        decoder = tensors["decoder"].to(torch.float64)
        if decoder.shape[0] != self.n_concepts:
            raise ValueError(f"{decoder.shape[0]} atoms for n_concepts={self.n_concepts}")
        self.decoder = decoder
        self.encoder = tensors["encoder"].to(torch.float64)
        self.encoder_bias = tensors["encoder_bias"].to(torch.float64)
        self.scale = float(tensors["scale"].item())


@hookimpl
def register_decomposers(register: Register) -> None:
    register("sae", TopKSAEDecomposer, description="TopK sparse autoencoder: concepts as dictionary atoms")
