"""`featinv viz NAME`: run any registered analysis (built-in or a plugin's) and write its figures + JSON.

Every command here goes through ``featinv.registry.create_analysis(NAME, **options)`` and the analysis's
``run(...)``, so a built-in is run exactly like a third-party one. The paper's analyses have commands
with options of their own, named like the registered analysis (`viz steering`, `viz interpolation`,
`viz compose`; the 0.1 names `viz concept` and `viz interpolate` stay as hidden aliases for one release).
Any other registered analysis gets the generic command (:func:`run_analysis`): the common options plus
``--option KEY=VALUE`` for the analysis's own options and ``--input KEY=VALUE`` for extra inputs of its
``run``. The ``viz`` group (:class:`AnalysisGroup`) looks those names up in the registry when asked, so
an analysis registered after the CLI was built (a test's ``featinv.registry.reset``) runs too.

Typer needs every option as a parameter of each command, so the common sampling options repeat in each
signature (spelled once, as the shared ``Annotated`` aliases of :mod:`featinv.cli.options`); each command
turns them into one :class:`~featinv.analyses.base.SamplingOptions` with :func:`_sampling`.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from featinv.cli.concepts import parse_options
from featinv.cli.options import (
    BatchSize,
    Bf16,
    ControlStrength,
    Device,
    FeatureGuidanceStrength,
    GuessMode,
    Guidance,
    GuidanceNormalize,
    GuidanceSchedule,
    Quiet,
    RunDir,
    Scheduler,
    Steps,
    make_feature_guidance,
)
from featinv.console import console
from featinv.errors import FeatinvError

Seed = Annotated[int, typer.Option("--seed", help="Random seed (steering uses seed, seed+1, ... for its n pairs).")]
ImagesA = Annotated[list[Path], typer.Option("--image-a", "-a", help="First image(s): files or folders (repeatable).")]
ImagesB = Annotated[list[Path], typer.Option("--image-b", "-b", help="Second image(s): one, or one per first image.")]
VizOut = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: viz/COMMAND).")]
AnalysisOption = Annotated[list[str] | None, typer.Option(
    "--option", help="Analysis option KEY=VALUE (repeatable; values parsed as JSON when they can be), e.g. n=3.")]


def _registered_analyses() -> list[str]:
    """Names in the analysis registry; none when the plugins cannot be loaded (the error shows on use)."""
    from featinv.registry import list_analyses

    try:
        return list_analyses()
    except FeatinvError:
        return []


class AnalysisGroup(TyperGroup):
    """The ``viz`` group: its own commands, plus the generic command for every other registered analysis."""

    def list_commands(self, ctx: Any) -> list[str]:
        """The group's own commands, then every other registered analysis (so `viz --help` lists plugins')."""
        own = super().list_commands(ctx)
        return [*own, *(name for name in _registered_analyses() if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """An own command, else the generic command when ``cmd_name`` is a registered analysis, else None."""
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _registered_analyses():
            return generic_command(cmd_name)
        return command


viz_app = typer.Typer(
    name="viz",
    cls=AnalysisGroup,
    help="Analyses on feature maps: concept steering (FeatInv-Viz), interpolation, spatial composition, and any "
         "analysis a plugin registers (`featinv plugins` lists them).",
    no_args_is_help=True,
)


def _sampling(seed: int, steps: int, guidance: float | None, scheduler: str, batch_size: int, bf16: bool,
              steering: tuple[float, str, str] = (0.0, "all", "std"), control: tuple[float, bool] = (1.0, False)) -> Any:
    """The sampling options every analysis shares; ``steering``: (strength, schedule, normalisation) of feature
    guidance as the three CLI options give them; ``control``: (control strength, guess mode)."""
    from featinv.analyses.base import SamplingOptions

    return SamplingOptions(seed=seed, steps=steps, guidance_scale=guidance, scheduler=scheduler,
                           batch_size=batch_size, bf16=bf16, feature_guidance=make_feature_guidance(*steering),
                           control_strength=control[0], guess_mode=control[1])


def _report(result: Any) -> None:
    for path in result.figures:
        console.print(f"wrote {path}")
    console.print(f"numbers -> {result.summary_path}")
    for message in result.warnings:
        console.print(f"[yellow]warning:[/] {message}", highlight=False)


def run_registered(ctx: typer.Context, name: str, options: dict[str, Any], sampling: Any, run: Path, images: Any,
                   out: Path | None, device: str, quiet: bool, **inputs: Any) -> None:
    """Build analysis ``name`` from the registry with ``options``, run it, print what it wrote.

    The out-of-distribution warnings are collected by the analysis and printed once by :func:`_report`.
    """
    from featinv.analyses.shift import FeatureShiftWarning
    from featinv.registry import create_analysis

    try:
        analysis = create_analysis(name, sampling=sampling, progress=not quiet, **options)
    except TypeError as exc:  # an option the analysis does not take (a typo in --option KEY=VALUE)
        raise FeatinvError(f"bad option for the {name} analysis ({str(exc).split('__init__() ')[-1]}); check the "
                           "--option names in the analysis's documentation") from None
    out_dir = out if out is not None else Path("viz") / (ctx.info_name or name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureShiftWarning)
        result = analysis.run(run, images, out_dir, device, **inputs)
    _report(result)


@viz_app.command("steering")
def steering(
    ctx: typer.Context,
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
    bf16: Bf16 = False,
    feature_guidance: FeatureGuidanceStrength = 0.0,
    guidance_schedule: GuidanceSchedule = "all",
    guidance_normalize: GuidanceNormalize = "std",
    control_strength: ControlStrength = 1.0,
    guess_mode: GuessMode = False,
    out: VizOut = None,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """FeatInv-Viz (Algorithm 1): attenuate each concept, reconstruct with the same seeds, show what changed.

    One figure per image (mask over the image, next to the upsampled concept map and Grad-CAM) + JSON.

    Example: featinv viz steering --run runs/lite0 --concepts concepts/bunting --image bird.jpg --n 5
    """
    options = {"attenuate": attenuate, "n": n, "threshold": threshold, "gradcam": gradcam}
    run_registered(ctx, "steering", options, _sampling(seed, steps, guidance, scheduler, batch_size, bf16,
                             (feature_guidance, guidance_schedule, guidance_normalize), (control_strength, guess_mode)), run,
                   image, out, device, quiet, decomposer=concepts, concepts=concept_id)


@viz_app.command("interpolation")
def interpolation(
    ctx: typer.Context,
    run: RunDir,
    image_a: ImagesA,
    image_b: ImagesB,
    weights: Annotated[str, typer.Option("--weights", help="Shares of image A, each in [0, 1].")] = "1,.75,.6,.5,.4,.25,0",
    seed: Seed = 0,
    steps: Steps = 50,
    guidance: Guidance = None,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 16,
    bf16: Bf16 = False,
    feature_guidance: FeatureGuidanceStrength = 0.0,
    guidance_schedule: GuidanceSchedule = "all",
    guidance_normalize: GuidanceNormalize = "std",
    control_strength: ControlStrength = 1.0,
    guess_mode: GuessMode = False,
    out: VizOut = None,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Reconstruct weighted mixes w*f(A) + (1-w)*f(B) with one seed; cosine similarity under each (Figure 5).

    Example: featinv viz interpolation --run runs/lite0 --image-a bird.jpg --image-b landscape.jpg
    """
    run_registered(ctx, "interpolation", {"weights": weights},
                   _sampling(seed, steps, guidance, scheduler, batch_size, bf16,
                             (feature_guidance, guidance_schedule, guidance_normalize), (control_strength, guess_mode)), run, image_a, out, device, quiet,
                   others=image_b)


@viz_app.command("compose")
def compose(
    ctx: typer.Context,
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
    bf16: Bf16 = False,
    feature_guidance: FeatureGuidanceStrength = 0.0,
    guidance_schedule: GuidanceSchedule = "all",
    guidance_normalize: GuidanceNormalize = "std",
    control_strength: ControlStrength = 1.0,
    guess_mode: GuessMode = False,
    out: VizOut = None,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Replace a region of A's feature map by B's, reconstruct, outline the region in yellow (Figure 10).

    Example: featinv viz compose --run runs/lite0 --image-a bird.jpg --image-b sky.jpg --region center
    """
    options = {"regions": region} if region else {}
    run_registered(ctx, "compose", options, _sampling(seed, steps, guidance, scheduler, batch_size, bf16,
                             (feature_guidance, guidance_schedule, guidance_normalize), (control_strength, guess_mode)), run,
                   image_a, out, device, quiet, others=image_b)


#: the 0.1 command names, kept as hidden aliases (``featinv viz concept`` is ``featinv viz steering``)
OLD_COMMAND_NAMES = {"concept": steering, "interpolate": interpolation}
for _old, _command in OLD_COMMAND_NAMES.items():
    viz_app.command(_old, hidden=True, help=f"Old name of `featinv viz {_command.__name__}` (kept for one release).")(
        _command)


# ------------------------------------------------------------------------ any other registered analysis


def run_analysis(
    ctx: typer.Context,
    run: RunDir,
    image: Annotated[list[Path], typer.Option(
        "--image", "-i", "--image-a", "-a", help="Image files or folders (repeatable): the analysis's images.")],
    image_b: Annotated[list[Path] | None, typer.Option(
        "--image-b", "-b", help="Second image(s), for analyses of image pairs (passed to run as others=).")] = None,
    concepts: Annotated[Path | None, typer.Option(
        "--concepts", help="Fitted concepts folder, for analyses of concepts (passed to run as decomposer=).")] = None,
    option: AnalysisOption = None,
    input_: Annotated[list[str] | None, typer.Option(
        "--input", help="Extra input of the analysis's run, KEY=VALUE (repeatable).")] = None,
    seed: Seed = 0,
    steps: Steps = 50,
    guidance: Guidance = None,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 16,
    bf16: Bf16 = False,
    feature_guidance: FeatureGuidanceStrength = 0.0,
    guidance_schedule: GuidanceSchedule = "all",
    guidance_normalize: GuidanceNormalize = "std",
    control_strength: ControlStrength = 1.0,
    guess_mode: GuessMode = False,
    out: VizOut = None,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Run a registered analysis: its options with --option KEY=VALUE, one figure + JSON per image.

    Example: featinv viz NAME --run runs/lite0 --image bird.jpg --option strength=2
    """
    name = ctx.info_name or ""
    inputs = parse_options(input_)
    if image_b:
        inputs["others"] = image_b
    if concepts is not None:
        inputs["decomposer"] = concepts
    run_registered(ctx, name, parse_options(option), _sampling(seed, steps, guidance, scheduler, batch_size, bf16,
                             (feature_guidance, guidance_schedule, guidance_normalize), (control_strength, guess_mode)),
                   run, image, out, device, quiet, **inputs)


_generic_app = typer.Typer(add_completion=False)
_generic_app.command("analysis")(run_analysis)


def generic_command(name: str) -> Any:
    """The click command that runs registered analysis ``name`` through :func:`run_analysis`."""
    from featinv.registry import get_registry

    command = copy.copy(typer.main.get_command(_generic_app))
    command.name = name
    description = get_registry("analyses").get(name).description
    if description:
        command.short_help = description
        command.help = f"{description}\n\n{command.help}"
    return command


def register(app: typer.Typer) -> None:
    app.add_typer(viz_app, name="viz")
