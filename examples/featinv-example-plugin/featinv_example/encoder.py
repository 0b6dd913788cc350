"""A feature-encoder plugin: ``example-linear``, a zero-initialised 1x1 convolution on the latent grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from featinv.diffusion.encoders import FeatureEncoder, check_encoder_sizes
from featinv.hookspecs import Register, hookimpl


class LinearEncoder(FeatureEncoder):
    """Bilinear resize to the latent grid (``as_grid``), then one 1x1 convolution, zero-initialised."""

    encoder_name = "example-linear"  # must equal the registered name: it is saved with the run

    @register_to_config  # the __init__ arguments are the config saved with the run
    def __init__(self, in_channels: int, out_channels: int, grid: Sequence[int] = (32, 32)) -> None:
        super().__init__()
        check_encoder_sizes(in_channels, out_channels, grid)
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        nn.init.zeros_(self.proj.weight)  # a fresh model starts exactly at the frozen base
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.as_grid(features).to(self.proj.weight.dtype))


@hookimpl
def register_encoders(register: Register) -> None:
    register("example-linear", LinearEncoder, description="1x1 convolution on the latent grid (example plugin)")
