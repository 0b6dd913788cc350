"""The built-in ``sd`` base: a diffusers Stable Diffusion 1.x/2.x folder or hub id (MiniSD is the paper's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl

if TYPE_CHECKING:  # torch and diffusers load when a base is built, so listing plugins stays fast
    import torch

    from featinv.diffusion.bases import StableDiffusionBase


def sd_base(path_or_id: str | None = None, device: str | torch.device = "cpu") -> StableDiffusionBase:
    """``sd:PATH_OR_HUB_ID``: a diffusers Stable Diffusion 1.x/2.x checkpoint (e.g. MiniSD)."""
    from featinv.diffusion.bases import StableDiffusionBase

    if not path_or_id:
        raise FeatinvError("base 'sd' needs a folder or hub id; write e.g. sd:lambdalabs/miniSD-diffusers or sd:/models/minisd")
    return StableDiffusionBase.load(path_or_id, device=device)


def is_diffusers_folder(folder: Path) -> bool:
    """A diffusers pipeline folder has a ``model_index.json``."""
    return (folder / "model_index.json").is_file()


@hookimpl
def register_bases(register: Register) -> None:
    register("sd", sd_base, description="diffusers Stable Diffusion 1.x/2.x folder or hub id (MiniSD: 256 px)",
             recognizes=is_diffusers_folder)
