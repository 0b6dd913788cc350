"""`featinv viz steering|interpolation|compose`: the paper's analyses as figures + JSON (one call each).

Each command is named like the analysis it runs (its registered name); the 0.1 names `viz concept` and
`viz interpolate` stay as hidden aliases for one release.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from featinv.cli.options import BatchSize, Device, Guidance, OutDir, Quiet, RunDir, Scheduler, Steps
from featinv.console import console

viz_app = typer.Typer(
    name="viz",
    help="Analyses on feature maps: concept steering (FeatInv-Viz), interpolation, spatial composition.",
    no_args_is_help=True,
)

Seed = Annotated[int, typer.Option("--seed", help="Random seed (steering uses seed, seed+1, ... for its n pairs).")]
ImagesA = Annotated[list[Path], typer.Option("--image-a", "-a", help="First image(s): files or folders (repeatable).")]
ImagesB = Annotated[list[Path], typer.Option("--image-b", "-b", help="Second image(s): one, or one per first image.")]


def _quietly(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run an analysis with its out-of-distribution warnings collected (printed once by :func:`_report`)."""
    from featinv.analyses.shift import FeatureShiftWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureShiftWarning)
        return call(*args, **kwargs)


def _report(result: Any) -> None:
    for path in result.figures:
        console.print(f"wrote {path}")
    console.print(f"numbers -> {result.summary_path}")
    for message in result.warnings:
        console.print(f"[yellow]warning:[/] {message}", highlight=False)


@viz_app.command("steering")
def steering(
    run: RunDir,
    concepts: Annotated[Path, typer.Option("--concepts", help="Fitted concepts folder (`featinv concepts fit`).")],
    image: Annotated[list[Path], typer.Option("--image", "-i", help="Image files or folders (repeatable).")],
    concept_id: Annotated[str, typer.Option("--concept", help="Concept index, comma list (0,2) or all.")] = "all",
    attenuate: Annotated[float, typer.Option("--attenuate", help="Factor for the concept's part (paper: 0.25).")] = 0.25,
    n: Annotated[int, typer.Option("--n", "-n", help="Seed pairs; the difference map is their median.")] = 5,
    threshold: Annotated[float, typer.Option("--threshold", help="Mask threshold on the normalised difference.")] = 0.33,
    gradcam: Annotated[bool, typer.Option("--gradcam/--no-gradcam", help="Show Grad-CAM for comparison.")] = True,
    seed: Seed = 0,
    steps: Steps = 50,
    guidance: Guidance = None,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 16,
    out: OutDir = Path("viz/concept"),
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """FeatInv-Viz (Algorithm 1): attenuate each concept, reconstruct with the same seeds, show what changed.

    One figure per image (mask over the image, next to the upsampled concept map and Grad-CAM) + JSON.

    Example: featinv viz steering --run runs/lite0 --concepts concepts/bunting --image bird.jpg --n 5
    """
    from featinv.analyses.steering import steer_concepts

    _report(_quietly(steer_concepts, run, concepts, image, out, concepts=concept_id, attenuate=attenuate, n=n,
                     threshold=threshold, seed=seed, steps=steps, guidance_scale=guidance, scheduler=scheduler,
                     batch_size=batch_size, gradcam=gradcam, device=device, progress=not quiet))


@viz_app.command("interpolation")
def interpolation(
    run: RunDir,
    image_a: ImagesA,
    image_b: ImagesB,
    weights: Annotated[str, typer.Option("--weights", help="Shares of image A, each in [0, 1].")] = "1,.75,.6,.5,.4,.25,0",
    seed: Seed = 0,
    steps: Steps = 50,
    guidance: Guidance = None,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 16,
    out: OutDir = Path("viz/interpolate"),
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Reconstruct weighted mixes w*f(A) + (1-w)*f(B) with one seed; cosine similarity under each (Figure 5).

    Example: featinv viz interpolation --run runs/lite0 --image-a bird.jpg --image-b landscape.jpg
    """
    from featinv.analyses.interpolation import interpolate as run_interpolation

    _report(_quietly(run_interpolation, run, image_a, image_b, out, weights=weights, seed=seed, steps=steps,
                     guidance_scale=guidance, scheduler=scheduler, batch_size=batch_size, device=device,
                     progress=not quiet))


@viz_app.command("compose")
def compose(
    run: RunDir,
    image_a: ImagesA,
    image_b: ImagesB,
    region: Annotated[list[str] | None, typer.Option(
        "--region", "-r", help="top-left, center, bottom-right, full, ...; grid cells x0,y0,x1,y1 (integers) or "
        "image fractions (floats in [0,1]). Repeatable; default: top-left, center, bottom-right, full.")] = None,
    seed: Seed = 0,
    steps: Steps = 50,
    guidance: Guidance = None,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 16,
    out: OutDir = Path("viz/compose"),
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Replace a region of A's feature map by B's, reconstruct, outline the region in yellow (Figure 10).

    Example: featinv viz compose --run runs/lite0 --image-a bird.jpg --image-b sky.jpg --region center
    """
    from featinv.analyses.compose import DEFAULT_REGIONS
    from featinv.analyses.compose import compose as run_compose

    _report(_quietly(run_compose, run, image_a, image_b, out, region=region or list(DEFAULT_REGIONS), seed=seed,
                     steps=steps, guidance_scale=guidance, scheduler=scheduler, batch_size=batch_size, device=device,
                     progress=not quiet))


#: the 0.1 command names, kept as hidden aliases (``featinv viz concept`` is ``featinv viz steering``)
OLD_COMMAND_NAMES = {"concept": steering, "interpolate": interpolation}
for _old, _command in OLD_COMMAND_NAMES.items():
    viz_app.command(_old, hidden=True, help=f"Old name of `featinv viz {_command.__name__}` (kept for one release).")(
        _command)


def register(app: typer.Typer) -> None:
    app.add_typer(viz_app, name="viz")
