"""The FeatInv ControlNet: diffusers' ``ControlNetModel`` with a feature encoder as its conditioning embedding.

``ControlNetModel.forward`` computes ``conv_in(sample) + controlnet_cond_embedding(controlnet_cond)``, so
replacing ``controlnet_cond_embedding`` by a feature encoder (feature map -> ``[B, C0, H, W]`` at the
latent grid, zero-initialised last layer) gives exactly the paper's architecture: the encoder output is
added after ``conv_in``, the trainable encoder copy is initialised from the frozen UNet, and all
residuals go through zero 1×1 convolutions.

Saved layout (``save_pretrained``): ``config.json`` (the ControlNet config), ``diffusion_pytorch_model.safetensors``
(checksummed, without the encoder) and ``encoder/`` (its own config naming the registered encoder + weights).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from featinv.diffusion.encoders import FeatureEncoder, load_encoder
from featinv.errors import FeatinvError
from featinv.io import atomic_dir, load_safetensors, read_json, save_safetensors, write_json

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_ENCODER_PREFIX = "controlnet_cond_embedding."


class FeatInvControlNet(ControlNetModel):
    """A ``ControlNetModel`` whose ``controlnet_cond_embedding`` is a :class:`~featinv.diffusion.encoders.FeatureEncoder`."""

    @classmethod
    def from_unet_and_encoder(cls, unet: UNet2DConditionModel, encoder: FeatureEncoder) -> FeatInvControlNet:
        """Copy the frozen UNet's encoder half (``from_unet``) and plug in the feature encoder."""
        if encoder.config.out_channels != unet.config.block_out_channels[0]:
            raise FeatinvError(f"encoder produces {encoder.config.out_channels} channels but the UNet's first block has "
                               f"{unet.config.block_out_channels[0]}; build the encoder with out_channels="
                               f"{unet.config.block_out_channels[0]}")
        # the stock image embedding is built tiny and replaced at once
        net = cls.from_unet(unet, conditioning_embedding_out_channels=(8,), conditioning_channels=1)
        net.controlnet_cond_embedding = encoder
        return net

    @property
    def encoder(self) -> FeatureEncoder:
        return self.controlnet_cond_embedding  # type: ignore[return-value]

    def save_pretrained(self, save_directory: str | os.PathLike[str], **_: Any) -> None:  # type: ignore[override]
        """Write config, checksummed weights and the encoder into ``save_directory`` atomically."""
        with atomic_dir(save_directory, kind="ControlNet") as tmp:
            write_json(tmp / "config.json", json.loads(self.to_json_string()))
            state = {k: v for k, v in self.state_dict().items() if not k.startswith(_ENCODER_PREFIX)}
            save_safetensors(state, tmp / WEIGHTS_NAME)
            self.encoder.save(tmp / "encoder")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str],  # type: ignore[override]
                        weights: bool = True, **_: Any) -> FeatInvControlNet:
        """Rebuild from a folder written by :meth:`save_pretrained` (weights verified by checksum;
        ``weights=False``: the architecture only, randomly initialised, as a dry run needs it)."""
        directory = Path(pretrained_model_name_or_path)
        config = read_json(directory / "config.json", what="ControlNet config")
        net = cls.from_config(config)
        net.controlnet_cond_embedding = load_encoder(directory / "encoder", weights=weights)
        if not weights:
            return net.eval()
        state = load_safetensors(directory / WEIGHTS_NAME)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a tensor of the wrong shape (torch reports every one; the first is enough)
            detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "shape mismatch")
            raise FeatinvError(f"ControlNet weights in {directory} do not fit its config ({detail.rstrip('.')}); "
                               "recreate the run folder") from None
        missing = [k for k in missing if not k.startswith(_ENCODER_PREFIX)]
        if missing or unexpected:
            raise FeatinvError(f"ControlNet weights in {directory} do not fit its config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}); recreate the run folder")
        net.eval()
        return net

    def residuals(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  features: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The down-block and mid-block residuals to add to the frozen UNet."""
        down, mid = self(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         controlnet_cond=features, return_dict=False)
        return list(down), mid


#: the authors' guess-mode decay: residual i of n is scaled by GUESS_DECAY ** (n - 1 - i) (0.825^(12-i) for SD 1.x)
GUESS_DECAY = 0.825


@dataclass(frozen=True)
class ControlScales:
    """The authors' two sampler controls (their ``process()``): ``strength`` scales every ControlNet residual;
    ``guess_mode`` gives the unconditional branch no features and decays the residual scales with depth.

    The default (1.0, off) is the paper's sampler, bit for bit: nothing is scaled.
    """

    strength: float = 1.0
    guess_mode: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength) and self.strength >= 0):
            raise FeatinvError(f"control strength must be a finite number >= 0, got {self.strength!r}; 1 is the "
                               "paper's sampler")

    @property
    def is_default(self) -> bool:
        """Whether these are the paper sampler's settings (nothing scaled)."""
        return self.strength == 1.0 and not self.guess_mode

    def scales(self, count: int) -> list[float] | None:
        """One scale per residual (down blocks first, the mid block last); None when none is scaled."""
        if self.is_default:
            return None
        if self.guess_mode:
            return [self.strength * GUESS_DECAY ** float(count - 1 - i) for i in range(count)]
        return [float(self.strength)] * count

    def describe(self) -> dict[str, object]:
        """The two settings as JSON, for a reconstruction's metadata and an output's settings."""
        return {"control_strength": float(self.strength), "guess_mode": bool(self.guess_mode)}


def controlled_unet(unet: UNet2DConditionModel, controlnet: FeatInvControlNet | None, sample: torch.Tensor,
                    timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    features: torch.Tensor | None, control: ControlScales | None = None,
                    uncontrolled: int = 0) -> torch.Tensor:
    """One prediction of the frozen UNet with the ControlNet's residuals added (noise or v).

    Without a ControlNet there are no residuals: the UNet runs exactly as in plain text-to-image sampling.
    ``control`` scales the residuals; the first ``uncontrolled`` rows get none (guess mode's unconditional
    branch: ``features`` then holds only the other rows' maps).
    """
    down, mid = None, None
    if controlnet is not None:
        rows = slice(uncontrolled, None)
        down, mid = controlnet.residuals(sample[rows], timestep, encoder_hidden_states[rows], features)
        scales = control.scales(len(down) + 1) if control is not None else None
        if scales is not None:
            down, mid = [r * s for r, s in zip(down, scales[:-1], strict=True)], mid * scales[-1]
        if uncontrolled:  # zero residuals: those rows run exactly as the plain UNet
            down = [torch.cat([r.new_zeros((uncontrolled, *r.shape[1:])), r]) for r in down]
            mid = torch.cat([mid.new_zeros((uncontrolled, *mid.shape[1:])), mid])
    return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
