"""`featinv reconstruct`: images -> feature maps -> FeatInv samples as PNGs plus a JSON index (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featinv.cli.options import (
    BatchSize,
    ControlStrength,
    Device,
    DryRun,
    FeatureGuidanceStrength,
    GuessMode,
    Guidance,
    GuidanceNormalize,
    GuidanceSchedule,
    OutDir,
    Quiet,
    RunDir,
    Scheduler,
    Seeds,
    Steps,
    make_feature_guidance,
    parse_int_list,
)
from featinv.console import console


def reconstruct(
    run: RunDir,
    images: Annotated[list[Path], typer.Option("--images", "-i", help="Image files or folders (repeatable).")],
    out: OutDir,
    seeds: Seeds = "0",
    guidance: Guidance = None,
    steps: Steps = 50,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 8,
    device: Device = "cpu",
    resize: Annotated[bool, typer.Option("--resize/--base-size", help="Write images at the backbone's input "
                                         "size instead of the diffusion base's resolution.")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="bfloat16 autocast for the denoiser (CUDA only).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo outputs that already exist.")] = False,
    feature_guidance: FeatureGuidanceStrength = 0.0,
    guidance_schedule: GuidanceSchedule = "all",
    guidance_normalize: GuidanceNormalize = "std",
    control_strength: ControlStrength = 1.0,
    guess_mode: GuessMode = False,
    dry_run: DryRun = False,
    quiet: Quiet = False,
) -> None:
    """Reconstruct images from their feature maps with a trained FeatInv run, one PNG per image and seed.

    Finished outputs are skipped, so rerunning an interrupted command resumes it. Under torchrun or accelerate
    launch the images are shared across the processes (the outputs are the same as one process's).

    Example: featinv reconstruct --run runs/lite0 --images photos/ --seeds 0,1,2 --out recon/
    Guided: featinv reconstruct --run runs/lite0 --images photos/ --out recon/ --feature-guidance 0.1
    Plan only: featinv reconstruct --run runs/lite0 --images photos/ --out recon/ --dry-run
    """
    steering = make_feature_guidance(feature_guidance, guidance_schedule, guidance_normalize)
    sampling = dict(seeds=parse_int_list(seeds), guidance_scale=guidance, steps=steps, scheduler=scheduler,
                    batch_size=batch_size, device=device, resize=resize, bf16=bf16, feature_guidance=steering,
                    control_strength=control_strength, guess_mode=guess_mode)
    if dry_run:
        from featinv.apps.reconstruct_plan import reconstruction_plan
        from featinv.cli.dry_run import print_plan

        print_plan("featinv reconstruct --dry-run (nothing sampled, nothing written)",
                   reconstruction_plan(run, images, out, **sampling))
        return
    from featinv.apps.reconstruct_folder import reconstruct_images

    summary = reconstruct_images(run, images, out, overwrite=overwrite, progress=not quiet, **sampling)
    console.print(f"wrote {len(summary.written)} images, skipped {len(summary.skipped)} already done "
                  f"-> {summary.index_path}")
    for path in summary.unreadable:
        console.print(f"[yellow]skipped unreadable image:[/] {path}")


def register(app: typer.Typer) -> None:
    app.command("reconstruct")(reconstruct)
