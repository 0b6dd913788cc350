"""The ``conv`` feature encoder: the paper's conditional input encoder (bilinear upsampling + a shallow CNN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from featinv.diffusion.encoders import FeatureEncoder, check_encoder_sizes
from featinv.hookspecs import Register, hookimpl


class ConvEncoder(FeatureEncoder):
    """Bilinear upsampling to the latent grid, then conv3×3 → SiLU → conv3×3 → SiLU → zero conv3×3.

    This is the paper's conditional input encoder (hidden width 512 for MiniSD); ``hidden`` is
    configurable so tests and the CPU demo can use small widths.
    """

    encoder_name = "conv"

    @register_to_config
    def __init__(self, in_channels: int, out_channels: int, grid: Sequence[int] = (32, 32), hidden: int = 512) -> None:
        super().__init__()
        check_encoder_sizes(in_channels, out_channels, grid)
        self.conv1 = nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.conv_out = nn.Conv2d(hidden, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # zero-init: training starts from the frozen base
        nn.init.zeros_(self.conv_out.bias)
        self.act = nn.SiLU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.as_grid(features).to(self.conv1.weight.dtype)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv_out(x)


@hookimpl
def register_encoders(register: Register) -> None:
    register("conv", ConvEncoder, description="bilinear upsample + shallow CNN, zero-init output (paper)")
