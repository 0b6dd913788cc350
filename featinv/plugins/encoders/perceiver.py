"""The ``perceiver`` feature encoder (the paper's ablation alternative): learned latents cross-attend to the
feature tokens, so it can mix information across the whole feature map."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from featinv.diffusion.encoders import FeatureEncoder, check_encoder_sizes
from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl


def fourier_positions(height: int, width: int, bands: int, device: torch.device) -> torch.Tensor:
    """``[h*w, 4*bands]`` sin/cos features of normalised (y, x) in [-1, 1], so any grid size maps alike."""
    ys = torch.linspace(-1.0, 1.0, height, device=device) if height > 1 else torch.zeros(1, device=device)
    xs = torch.linspace(-1.0, 1.0, width, device=device) if width > 1 else torch.zeros(1, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)  # [h*w, 2]
    freqs = math.pi * (2.0 ** torch.arange(bands, device=device, dtype=torch.float32))
    angles = coords[:, :, None] * freqs  # [h*w, 2, bands]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(coords.shape[0], 4 * bands)


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention plus MLP, both residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(context)
        queries = queries + self.attn(self.norm_q(queries), kv, kv, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class PerceiverEncoder(FeatureEncoder):
    """A learned latent array cross-attends to the feature tokens (with 2-D Fourier positions); each
    latent-grid position then reads the latents out by cross-attention, and a zero-initialised linear
    layer projects to ``C0``. Unlike ``conv`` it can mix information across the whole feature map.
    """

    encoder_name = "perceiver"

    @register_to_config
    def __init__(self, in_channels: int, out_channels: int, grid: Sequence[int] = (32, 32), dim: int = 256,
                 num_latents: int = 64, heads: int = 4, depth: int = 2, position_bands: int = 8) -> None:
        super().__init__()
        check_encoder_sizes(in_channels, out_channels, grid)
        if dim % heads:
            raise FeatinvError(f"perceiver dim {dim} is not divisible by heads {heads}; pick e.g. dim={heads * 32}")
        self.token_proj = nn.Linear(in_channels, dim)
        self.position_proj = nn.Linear(4 * position_bands, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.encode_blocks = nn.ModuleList([_CrossBlock(dim, heads) for _ in range(depth)])
        self.query_proj = nn.Linear(4 * position_bands, dim)
        self.readout = _CrossBlock(dim, heads)
        self.norm_out = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, out_channels)
        nn.init.zeros_(self.proj_out.weight)  # zero-init: training starts from the frozen base
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 2:
            features = features[:, :, None, None]
        self.as_grid(features[:, :, :1, :1])  # validates shape and channels
        batch, _, h, w = features.shape
        features = features.to(self.token_proj.weight.dtype)
        bands = self.config.position_bands
        tokens = self.token_proj(features.flatten(2).transpose(1, 2))  # [B, h*w, dim]
        tokens = tokens + self.position_proj(fourier_positions(h, w, bands, features.device))
        latents = self.latents.expand(batch, -1, -1)
        for block in self.encode_blocks:
            latents = block(latents, tokens)
        height, width = self.latent_grid
        queries = self.query_proj(fourier_positions(height, width, bands, features.device)).expand(batch, -1, -1)
        out = self.proj_out(self.norm_out(self.readout(queries, latents)))  # [B, H*W, C0]
        return out.transpose(1, 2).reshape(batch, -1, height, width)


@hookimpl
def register_encoders(register: Register) -> None:
    register("perceiver", PerceiverEncoder, description="learned latents cross-attend to feature tokens")
