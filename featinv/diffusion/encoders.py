"""Feature encoders: a classifier's feature map -> the ControlNet's conditioning tensor at the latent grid.

An encoder is a diffusers ``ModelMixin, ConfigMixin`` whose ``__init__`` signature is its config. It maps
``[B, C, h, w]`` (or a pooled ``[B, C]`` vector, broadcast to the grid) to ``[B, C0, H, W]``, where
``C0`` is the first block width of the diffusion UNet and ``(H, W)`` its latent grid. Its last layer is
zero-initialised so that a fresh FeatInv model starts exactly at the frozen diffusion base.

The built-in encoders (``conv``, ``perceiver``) are plugins (``featinv/plugins/encoders/``), registered like
third-party ones; this module holds the shared base class and how encoders are saved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin

from featinv.errors import FeatinvError
from featinv.io import load_safetensors, read_json, save_safetensors, write_json

WEIGHTS_NAME = "encoder.safetensors"
CONFIG_NAME = "config.json"


def check_encoder_sizes(in_channels: int, out_channels: int, grid: Sequence[int]) -> None:
    """Refuse non-positive channel counts or a malformed latent grid before any layer is built."""
    if in_channels < 1 or out_channels < 1 or len(grid) != 2 or min(grid) < 1:
        raise FeatinvError(f"encoder sizes must be positive (in_channels={in_channels}, out_channels={out_channels}, "
                           f"grid={tuple(grid)}); check the backbone layer and diffusion base")


class FeatureEncoder(ModelMixin, ConfigMixin):
    """Base class of feature encoders; subclasses set ``encoder_name`` to their registry name."""

    config_name = CONFIG_NAME
    encoder_name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()

    @property
    def latent_grid(self) -> tuple[int, int]:
        grid = self.config.grid
        return (int(grid[0]), int(grid[1]))

    def as_grid(self, features: torch.Tensor) -> torch.Tensor:
        """Bring ``[B,C,h,w]`` or pooled ``[B,C]`` features onto the latent grid (bilinear, as in the paper)."""
        if features.ndim == 2:  # a pooled vector: copy it to every position of the grid
            features = features[:, :, None, None]
        if features.ndim != 4:
            raise FeatinvError(f"encoder input must be [B,C,h,w] or [B,C], got shape {tuple(features.shape)}; "
                               "pass a backbone feature map")
        if features.shape[1] != self.config.in_channels:
            raise FeatinvError(f"encoder expects {self.config.in_channels} feature channels, got {features.shape[1]}; "
                               "use the backbone layer the model was trained on")
        grid = self.latent_grid
        if tuple(features.shape[-2:]) == grid:
            return features
        if features.shape[-2:] == (1, 1):
            return features.expand(-1, -1, *grid)
        return F.interpolate(features, size=grid, mode="bilinear", align_corners=False)

    def init_kwargs(self) -> dict[str, Any]:
        """The ``__init__`` arguments (config without diffusers' private keys), JSON-ready."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.items() if not k.startswith("_")}

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``config.json`` (with the registry name) and checksummed weights into ``directory``."""
        if not self.encoder_name:
            raise FeatinvError(f"{type(self).__name__} has no encoder_name; set the class attribute to its registry name")
        directory = Path(directory)
        save_safetensors(self.state_dict(), directory / WEIGHTS_NAME, metadata={"encoder": self.encoder_name})
        write_json(directory / CONFIG_NAME, {"encoder": self.encoder_name, **self.init_kwargs()})


def build_encoder(name: str, in_channels: int, out_channels: int, grid: tuple[int, int],
                  **config: Any) -> FeatureEncoder:
    """Create the encoder registered as ``name`` for ``C -> C0`` channels at the latent ``grid``."""
    from featinv.registry import create_encoder

    try:
        encoder = create_encoder(name, in_channels=int(in_channels), out_channels=int(out_channels),
                                 grid=(int(grid[0]), int(grid[1])), **config)
    except TypeError as exc:
        raise FeatinvError(f"bad options for encoder {name!r} ({exc}); check encoder_kwargs") from None
    if not isinstance(encoder, torch.nn.Module):
        raise FeatinvError(f"encoder plugin {name!r} returned {type(encoder).__name__}, not a torch module; fix the plugin")
    return encoder


def load_encoder(directory: str | os.PathLike[str], weights: bool = True) -> FeatureEncoder:
    """Rebuild an encoder saved with :meth:`FeatureEncoder.save` (config + verified weights; ``weights=False``:
    the architecture only, randomly initialised, for a dry run's shapes and FLOPs)."""
    directory = Path(directory)
    config = dict(read_json(directory / CONFIG_NAME, what="encoder config"))
    name = config.pop("encoder", None)
    if not name:
        raise FeatinvError(f"encoder config {directory / CONFIG_NAME} names no encoder; recreate the run folder")
    in_channels, out_channels, grid = config.pop("in_channels"), config.pop("out_channels"), config.pop("grid")
    encoder = build_encoder(name, in_channels, out_channels, tuple(grid), **config)
    if not weights:
        return encoder
    state = load_safetensors(directory / WEIGHTS_NAME)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FeatinvError(f"encoder weights in {directory} do not fit its config ({str(exc).splitlines()[0]}); "
                           "recreate the run folder") from None
    return encoder
