"""A diffusion-base plugin: ``example-tiny:RESOLUTION``, a seeded, untrained pixel-space base.

A real base plugin would load weights from the path after the colon; this one builds the same tiny base
from its spec every time, which is enough to train and sample FeatInv end to end in seconds.
"""

from __future__ import annotations

import torch

from featinv.diffusion.bases import PixelBase
from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl


class TinyBase(PixelBase):
    """A :class:`PixelBase` whose spec rebuilds it exactly, so a run trained on it can be loaded again."""

    @property
    def reloadable(self) -> bool:
        return True


def create_tiny_base(resolution: str | None = None, device: str | torch.device = "cpu") -> TinyBase:
    """``example-tiny:16``: a seeded 16 px base (any multiple of 2 works)."""
    if not resolution or not resolution.isdigit() or int(resolution) % 2:
        raise FeatinvError(f"example-tiny needs an even resolution in pixels, got {resolution!r}; write example-tiny:16")
    with torch.random.fork_rng(devices=[]):  # the same weights in every process, without touching the caller's RNG
        base = TinyBase.create(resolution=int(resolution), widths=(8, 16), cross_attention_dim=8, attention_head_dim=4,
                               seed=0, device=device)
    base.spec = f"example-tiny:{resolution}"
    return base


@hookimpl
def register_bases(register: Register) -> None:
    register("example-tiny", create_tiny_base, description="seeded untrained pixel base: example-tiny:16 (example plugin)")
