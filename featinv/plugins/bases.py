"""Built-in diffusion bases: ``sd`` (diffusers Stable Diffusion folders / hub ids) and ``pixel``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featinv.errors import FeatinvError
from featinv.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch


def sd_base(path_or_id: str | None = None, device: str | torch.device = "cpu"):
    """``sd:PATH_OR_HUB_ID``: a diffusers Stable Diffusion 1.x/2.x checkpoint (e.g. MiniSD)."""
    from featinv.diffusion.bases import StableDiffusionBase

    if not path_or_id:
        raise FeatinvError("base 'sd' needs a folder or hub id; write e.g. sd:lambdalabs/miniSD-diffusers or sd:/models/minisd")

    return StableDiffusionBase.load(path_or_id, device=device)


def pixel_base(directory: str | None = None, device: str | torch.device = "cpu"):
    """``pixel:DIR``: a small pixel-space base written by ``featinv base train``."""
    from featinv.diffusion.bases import PixelBase

    if not directory:
        raise FeatinvError("base 'pixel' needs the folder of a trained pixel base; write pixel:DIR "
                           "(train one with `featinv base train`)")

    return PixelBase.from_pretrained(directory, device=device)


@hookimpl
def register_bases(register) -> None:  # noqa: ANN001 - pluggy passes the register callable
    register("sd", sd_base, description="diffusers Stable Diffusion 1.x/2.x folder or hub id (MiniSD: 256 px)")
    register("pixel", pixel_base, description="small pixel-space UNet base trained on a CPU (featinv base train)")
