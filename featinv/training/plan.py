"""``featinv train --dry-run``: every resolved setting of a run and what it implies, with nothing trained or written.

The model is built as training would build it, except that the backbone gets seeded random weights (shapes
do not depend on weights, and a dry run must not download anything): the feature grid and channels at the
chosen input size, the base's resolution and latent grid, encoder and ControlNet parameter counts, the
schedule (global batch, steps per epoch, total steps) for the data found, and the FLOPs of one training
sample counted through the real modules with the time they take at the recorded rate of this device.
"""

from __future__ import annotations

from typing import Any

from featinv.diffusion.flops import on_meta, training_flops
from featinv.diffusion.plan import flop_rows, shape_rows, show
from featinv.training.config import TrainConfig
from featinv.training.data import Schedule, load_training_images


def training_plan(config: TrainConfig, world_size: int = 1) -> list[tuple[str, str]]:
    """``(setting, value)`` rows: the config as resolved, then the shapes, sizes, step counts and FLOPs it implies."""
    from featinv.diffusion.model import FeatInv

    config.check()
    images = load_training_images(config.data, max_samples=config.max_samples, seed=config.seed)
    model = FeatInv.create(config.backbone, config.base, layer=config.layer, pooled=config.pooled,
                           encoder=config.encoder, encoder_kwargs=config.encoder_kwargs, backbone_weights="none",
                           input_size=config.input_size, device="cpu", guidance_scale=config.guidance_scale,
                           resolution=config.resolution)
    schedule = Schedule(n=len(images), batch_size=config.batch_size, world_size=world_size,
                        grad_accum=config.grad_accum)
    encoder = _count(model.controlnet.encoder.parameters())
    total_steps = schedule.total_steps(config.epochs, config.max_steps)
    rows = [(key, show(value)) for key, value in config.to_json().items()]
    rows += [
        *shape_rows(model),
        ("encoder parameters", f"{encoder:,}"),
        ("ControlNet parameters", f"{_count(model.controlnet.parameters()) - encoder:,} (+ the encoder; trained)"),
        ("frozen base UNet parameters", f"{_count(model.base.unet.parameters()):,}"),
        ("training images", f"{len(images):,}"),
        ("global batch", f"{schedule.samples_per_step} ({config.batch_size} × {world_size} process(es) × "
                         f"{config.grad_accum} accumulation)"),
        ("steps per epoch", f"{schedule.steps_per_epoch:,}"),
        ("total steps", f"{total_steps:,}"),
    ]
    counts = training_flops(on_meta(model), with_backbone=not config.cache_features)
    precision = {"no": "fp32"}.get(config.mixed_precision, config.mixed_precision)
    rows += flop_rows(counts, {}, total_steps * schedule.samples_per_step, "sample", config.device, "train",
                      precision, config.batch_size)
    if config.cache_features:
        rows.append(("not in the estimate", "building the feature cache (one backbone forward per cached view)"))
    return rows


def _count(parameters: Any) -> int:
    return sum(p.numel() for p in parameters)
