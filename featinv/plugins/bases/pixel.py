"""The built-in ``pixel`` base: a small pixel-space UNet written by ``featinv base train`` (trains on a CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl

if TYPE_CHECKING:  # torch and diffusers load when a base is built, so listing plugins stays fast
    import torch

    from featinv.diffusion.bases import PixelBase


def pixel_base(directory: str | None = None, device: str | torch.device = "cpu") -> PixelBase:
    """``pixel:DIR``: a small pixel-space base written by ``featinv base train``."""
    from featinv.diffusion.bases import PixelBase

    if not directory:
        raise FeatinvError("base 'pixel' needs the folder of a trained pixel base; write pixel:DIR "
                           "(train one with `featinv base train`)")
    return PixelBase.from_pretrained(directory, device=device)


def is_pixel_base_folder(folder: Path) -> bool:
    """A folder written by ``PixelBase.save_pretrained`` carries featinv's base marker."""
    from featinv.diffusion.bases import PIXEL_MARKER

    return (folder / PIXEL_MARKER).is_file()


@hookimpl
def register_bases(register: Register) -> None:
    register("pixel", pixel_base, description="small pixel-space UNet base trained on a CPU (featinv base train)",
             recognizes=is_pixel_base_folder)
