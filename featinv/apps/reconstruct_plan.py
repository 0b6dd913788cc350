"""``featinv reconstruct --dry-run``: what a folder reconstruction would do, resolved without sampling or writing.

The run is rebuilt from its configs with random weights (no ControlNet or backbone weights read, nothing
downloaded), the images are listed and named as :func:`~featinv.apps.reconstruct_folder.reconstruct_images`
names them (without decoding them), and one reconstruction's FLOPs are counted on the meta device. No output
folder, lock or index is created.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featinv.apps.reconstruct_folder import _checked_arguments, _output_names
from featinv.diffusion.plan import run_rows, sampling_rows, show

__all__ = ["reconstruction_plan"]


def reconstruction_plan(run: str | os.PathLike[str], images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                        out: str | os.PathLike[str], seeds: Sequence[int] = (0,), guidance_scale: float | None = None,
                        steps: int = 50, scheduler: str = "ddim", batch_size: int = 8, device: str = "cpu",
                        resize: bool = False, bf16: bool = False, feature_guidance: Any = 0.0,
                        control_strength: float = 1.0, guess_mode: bool = False) -> list[tuple[str, str]]:
    """``(setting, value)`` rows of the reconstruction ``reconstruct_images`` would run with these arguments."""
    from featinv.diffusion.controlnet import ControlScales
    from featinv.diffusion.guidance import FeatureGuidance
    from featinv.diffusion.model import FeatInv
    from featinv.validation import check_guidance

    steering = FeatureGuidance.of(feature_guidance)
    control = ControlScales(control_strength, bool(guess_mode))
    inputs, seeds = _checked_arguments(images, seeds, batch_size, steps)
    items = _output_names(inputs, exclude=[out])
    model = FeatInv.from_pretrained(run, weights=False)
    model.base.make_scheduler(scheduler)  # an unknown sampler fails here, as it would before sampling
    guidance = model.guidance_scale if guidance_scale is None else check_guidance(guidance_scale)
    size = model.backbone.info.input_size if resize else (model.base.resolution,) * 2
    jobs = len(items) * len(seeds)
    rows = [*run_rows(model, run),
            ("images", f"{len(items):,} found in {show([str(Path(p)) for p in inputs])}"),
            ("seeds", show(seeds)), ("reconstructions", f"{jobs:,} (outputs already in the folder are skipped)"),
            ("steps", str(steps)), ("scheduler", scheduler),
            ("guidance", f"{guidance:g}" + (" (the run's default)" if guidance_scale is None else "")),
            ("feature guidance", steering.describe() if steering.active else "off"),
            ("control", "default" if control.is_default else show(control.describe())),
            ("batch size", str(batch_size)), ("precision", "bf16 autocast" if bf16 else "fp32"),
            ("device", device), ("written size", f"{size[0]}×{size[1]} px"),
            ("output folder", f"{out} (not created by a dry run)")]
    notes = ("feature guidance's gradient steps",) if steering.active else ()
    return rows + sampling_rows(model, jobs, steps, guidance, device, batch_size,
                                precision="bf16" if bf16 else "fp32", notes=notes)
