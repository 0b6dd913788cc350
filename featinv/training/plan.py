"""``featinv train --dry-run``: every resolved setting of a run and what it implies, with nothing trained or written.

The model is built as training would build it, except that the backbone gets seeded random weights (shapes
do not depend on weights, and a dry run must not download anything): the feature grid and channels at the
chosen input size, the base's resolution and latent grid, encoder and ControlNet parameter counts, and
the schedule (global batch, steps per epoch, total steps) for the data found.
"""

from __future__ import annotations

from typing import Any

from featinv.training.config import TrainConfig
from featinv.training.data import Schedule, load_training_images


def training_plan(config: TrainConfig, world_size: int = 1) -> list[tuple[str, str]]:
    """``(setting, value)`` rows: the config as resolved, then the shapes, sizes and step counts it implies."""
    from featinv.diffusion.model import FeatInv

    config.check()
    images = load_training_images(config.data, max_samples=config.max_samples, seed=config.seed)
    model = FeatInv.create(config.backbone, config.base, layer=config.layer, pooled=config.pooled,
                           encoder=config.encoder, encoder_kwargs=config.encoder_kwargs, backbone_weights="none",
                           input_size=config.input_size, device="cpu", guidance_scale=config.guidance_scale,
                           resolution=config.resolution)
    info, base = model.backbone.info, model.base
    schedule = Schedule(n=len(images), batch_size=config.batch_size, world_size=world_size,
                        grad_accum=config.grad_accum)
    encoder = _count(model.controlnet.encoder.parameters())
    rows = [(key, _show(value)) for key, value in config.to_json().items()]
    rows += [
        ("backbone input", f"{info.input_size[0]}×{info.input_size[1]} px"),
        ("feature map", f"{info.channels}×{info.grid[0]}×{info.grid[1]} ({info.layer})"
         + (", pooled to a vector" if config.pooled else "")),
        ("base resolution", f"{base.resolution} px (latent {base.latent_channels}×{base.latent_size}×{base.latent_size}, "
                            f"VAE factor {base.vae_scale_factor})"),
        ("encoder parameters", f"{encoder:,}"),
        ("ControlNet parameters", f"{_count(model.controlnet.parameters()) - encoder:,} (+ the encoder; trained)"),
        ("frozen base UNet parameters", f"{_count(base.unet.parameters()):,}"),
        ("training images", f"{len(images):,}"),
        ("global batch", f"{schedule.samples_per_step} ({config.batch_size} × {world_size} process(es) × "
                         f"{config.grad_accum} accumulation)"),
        ("steps per epoch", f"{schedule.steps_per_epoch:,}"),
        ("total steps", f"{schedule.total_steps(config.epochs, config.max_steps):,}"),
    ]
    return rows


def _count(parameters: Any) -> int:
    return sum(p.numel() for p in parameters)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)
