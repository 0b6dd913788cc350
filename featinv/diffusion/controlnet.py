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
import os
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
                        **_: Any) -> FeatInvControlNet:
        """Rebuild from a folder written by :meth:`save_pretrained` (weights verified by checksum)."""
        directory = Path(pretrained_model_name_or_path)
        config = read_json(directory / "config.json", what="ControlNet config")
        net = cls.from_config(config)
        net.controlnet_cond_embedding = load_encoder(directory / "encoder")
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


def controlled_unet(unet: UNet2DConditionModel, controlnet: FeatInvControlNet | None, sample: torch.Tensor,
                    timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    features: torch.Tensor | None) -> torch.Tensor:
    """One prediction of the frozen UNet with the ControlNet's residuals added (noise or v).

    Without a ControlNet there are no residuals: the UNet runs exactly as in plain text-to-image sampling.
    """
    down, mid = (None, None) if controlnet is None else controlnet.residuals(sample, timestep, encoder_hidden_states,
                                                                              features)
    return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
