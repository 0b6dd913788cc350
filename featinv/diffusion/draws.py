"""Random draws for one process's share of a training micro-batch.

Several processes split every global micro-batch by rows (:class:`featinv.training.data.ShardedBatches`). If
each drew its noise, timesteps and conditioning dropout from a generator of its own, a sample's randomness
would depend on how many processes share the batch. Instead every process draws each random tensor for *all*
rows of the global micro-batch from the micro-batch's generator and keeps its own rows. So two processes with
batch B train the same weights as one process with batch 2B (up to float summation order), and with one
process the draws are exactly those of the generator itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchDraws:
    """Draws from ``generator`` for rows ``offset ..`` of a global micro-batch of ``total`` rows.

    ``total`` None: this process holds the whole batch (the draws are the generator's own, unsliced).
    """

    generator: torch.Generator | None = None
    offset: int = 0
    total: int | None = None

    @classmethod
    def of(cls, source: BatchDraws | torch.Generator | None) -> BatchDraws:
        """Accept a plain generator (or None: torch's default one) where draws for a whole batch are meant."""
        return source if isinstance(source, BatchDraws) else cls(source)

    def _rows(self, n: int) -> tuple[int, slice]:
        """The global row count to draw and this process's ``n`` rows of it."""
        total = n if self.total is None else self.total
        if not 0 <= self.offset <= total - n:
            raise ValueError(f"rows {self.offset}..{self.offset + n} lie outside a micro-batch of {total}")
        return total, slice(self.offset, self.offset + n)

    def rand(self, n: int) -> torch.Tensor:
        """``[n]`` uniform [0, 1) values (CPU)."""
        total, rows = self._rows(n)
        return torch.rand(total, generator=self.generator)[rows]

    def randn(self, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Standard normal values of ``shape`` (rows first) on the CPU, in ``dtype`` as drawn."""
        total, rows = self._rows(int(shape[0]))
        return torch.randn((total, *shape[1:]), generator=self.generator, dtype=dtype)[rows]

    def randint(self, high: int, n: int) -> torch.Tensor:
        """``[n]`` integers in ``[0, high)`` (CPU)."""
        total, rows = self._rows(n)
        return torch.randint(0, high, (total,), generator=self.generator)[rows]
