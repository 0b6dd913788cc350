"""`featinv eval`: Table 1/2 metrics of a run, guidance sweep (Figure 7), comparisons and the class-prompt baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from featinv.cli.options import (
    BatchSize,
    ControlStrength,
    Device,
    DryRun,
    FeatureGuidanceStrength,
    GuessMode,
    GuidanceNormalize,
    GuidanceSchedule,
    JsonOutput,
    PresetName,
    Quiet,
    Scheduler,
    Steps,
    apply_preset,
    given_options,
    make_feature_guidance,
    parse_float_list,
    parse_int_list,
)
from featinv.console import console
from featinv.errors import FeatinvError

eval_app = typer.Typer(  # help comes from eval_main's docstring, which carries the example
    invoke_without_command=True,
    no_args_is_help=False,
)

PerClass = Annotated[int, typer.Option("--per-class", min=1, help="Originals per class (class = immediate subfolder).")]
EvalSeeds = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds; each original is reconstructed once per seed.")]
EvaluateWith = Annotated[list[str] | None, typer.Option(
    "--evaluate-with", help="Also score top5(1) under this backbone (repeatable), at its own input size: a spec "
    "(timm:convnext_base), a spec at a size (timm:convnext_base.fb_in22k_ft_in1k@288) or a preset (paper:resnet50).")]
ResizeMode = Annotated[str, typer.Option(
    "--resize-mode", help="How reconstructions are resized to each backbone's input: bilinear (the paper), "
    "bicubic, or model (each model's own interpolation).")]
EvaluateWeights = Annotated[list[str] | None, typer.Option(
    "--evaluate-weights", help="Weights for --evaluate-with backbones (one for all or one each): pretrained, none or a file.")]
Fid = Annotated[str, typer.Option(
    "--fid", help="FID space: auto (Inception weights if installed, else a labelled backbone substitute), inception, "
                  "a weight-file path, backbone, backbone:SPEC or none.")]
Limit = Annotated[int | None, typer.Option("--limit", min=0, help="Make at most this many reconstructions now "
                                           "(rerun to resume the rest).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Discard earlier results in --out instead of resuming.")]
OptOut = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: RUN/eval/<data folder name>).")]


def _default_out(run: Path, data: Path, guidance: float | None, sub: str = "", steering: Any = None) -> Path:
    """RUN/eval/<data>[-g<scale>][-fg<strength>]: a guided evaluation never lands in an unguided folder."""
    name = data.resolve().name or "data"
    suffix = f"-g{guidance:g}" if guidance is not None else ""
    if steering is not None and steering.active:
        suffix += f"-fg{steering.strength:g}"
    return run / "eval" / f"{sub}{name}{suffix}"


def _print_summaries(summaries: list[dict], title: str) -> None:
    from featinv.evaluation.tables import cross_rich_table, rich_table

    console.print(rich_table(summaries, title=title))
    cross = cross_rich_table(summaries)
    if cross is not None:
        console.print(cross)
    for s in summaries:
        if s.get("fid") and s["fid"]["label"] != "FID":
            console.print(f"[yellow]note:[/] {s['fid']['label']} is FID computed in {s['fid']['space']} feature space "
                          "(no Inception weights installed), not comparable to published FID values.")
            break
    for s in summaries:
        if s.get("topk_note"):
            console.print(f"[yellow]note:[/] {s['model']}: {s['topk_note']}")
    for s in summaries:
        if s.get("guidance_warning"):
            console.print(f"[yellow]warning:[/] {s['model']}: {s['guidance_warning']}")


def _unguided_summary(run: Path, data: Path, guidance: float | None, steering: Any) -> dict | None:
    """The paper sampler's summary at the default folder, when guided and it exists (for the pixel-error warning)."""
    if not steering.active:
        return None
    path = _default_out(run, data, guidance) / "metrics.json"
    if not path.is_file():
        console.print("[yellow]note:[/] feature guidance is on; judge it by pixel MSE / SSIM against an unguided "
                      f"evaluation of the same --data and --seeds (none found at {path.parent}).")
        return None
    from featinv.io import read_json

    return read_json(path, what="unguided evaluation").get("summary")


@eval_app.callback()
def eval_main(
    ctx: typer.Context,
    run: Annotated[Path | None, typer.Option("--run", help="A FeatInv run folder (written by `featinv train`).")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Image folder; subfolders are classes (ImageNet layout "
                                               "works; any folder, e.g. out-of-distribution images).")] = None,
    out: OptOut = None,
    per_class: PerClass = 10,
    seeds: EvalSeeds = "0",
    guidance: Annotated[float | None, typer.Option("--guidance", min=0.0, help="Guidance scale (default: the run's, "
                                                   "1.75 unpooled / 8 pooled).")] = None,
    steps: Steps = 50,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 8,
    evaluate_with: EvaluateWith = None,
    evaluate_weights: EvaluateWeights = None,
    fid: Fid = "auto",
    limit: Limit = None,
    overwrite: Overwrite = False,
    device: Device = "cpu",
    feature_guidance: FeatureGuidanceStrength = 0.0,
    guidance_schedule: GuidanceSchedule = "all",
    guidance_normalize: GuidanceNormalize = "std",
    preset: PresetName = None,
    resize_mode: ResizeMode = "model",
    control_strength: ControlStrength = 1.0,
    guess_mode: GuessMode = False,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """Reconstruct N images per class and report cosine-sim, top5(1) match and FID (paper Table 1 layout).

    Subcommands: sweep (Figure 7), compare (several runs in one table), baseline (class-prompt images, Table 3).
    Writes metrics.json, metrics.csv, metrics.md and the images with an index; rerunning resumes.

    --preset paper:convnext evaluates as the paper: 10 per class, 50 DDIM steps, bilinear resizing and
    Table 2's other models at their own sizes; options given explicitly override it. --dry-run prints the
    resolved evaluation, the originals found, estimated FLOPs and time, and writes nothing.

    Example: featinv eval --run runs/convnext --data val/ --per-class 10 --evaluate-with timm:resnet50
    """
    if ctx.invoked_subcommand is not None:
        return
    if run is None or data is None:
        raise FeatinvError("featinv eval needs --run DIR and --data DIR; see `featinv eval --help`")
    from featinv.cli.boundary import no_partial_output
    from featinv.evaluation.evaluate import evaluate

    steering = make_feature_guidance(feature_guidance, guidance_schedule, guidance_normalize)
    target = out or _default_out(run, data, guidance, steering=steering)
    settings = {"per_class": per_class, "guidance_scale": guidance, "steps": steps, "scheduler": scheduler,
                "evaluate_with": evaluate_with or [], "resize_mode": resize_mode}
    if preset is not None:
        from featinv.presets import get

        settings = apply_preset(settings, get(preset).eval_settings(), given_options(ctx), {"guidance_scale": "guidance"})
    if dry_run:
        from featinv.cli.dry_run import print_plan
        from featinv.evaluation.plan import evaluation_plan

        print_plan("featinv eval --dry-run (nothing sampled, nothing written)",
                   evaluation_plan(run, data, out=target, **settings, seeds=parse_int_list(seeds), batch_size=batch_size,
                                   fid=fid, limit=limit, device=device, feature_guidance=steering,
                                   control_strength=control_strength, guess_mode=guess_mode, preset=preset))
        return
    with no_partial_output([target]):  # the default folder inside the run is not an --out the root CLI sees
        result = evaluate(run, data, out=target, **settings, seeds=parse_int_list(seeds),
                          batch_size=batch_size, evaluate_weights=evaluate_weights,
                          fid=fid, limit=limit, overwrite=overwrite, device=device, progress=not quiet,
                          feature_guidance=steering, control_strength=control_strength, guess_mode=guess_mode,
                          unguided_summary=_unguided_summary(run, data, guidance, steering))
    if not result.summary:  # another process of a multi-process launch: rank 0 reports
        return
    if json_output:
        console.print_json(json.dumps(result.summary))
        return
    _print_summaries([result.summary], title=f"FeatInv evaluation ({result.summary['n_images']} reconstructions)")
    if not result.summary["complete"]:
        console.print("[yellow]partial:[/] rerun the same command to finish the remaining images.")
    console.print(f"results in {result.out}")


@eval_app.command("sweep")
def eval_sweep(
    run: Annotated[Path, typer.Option("--run", help="A FeatInv run folder.")],
    data: Annotated[Path, typer.Option("--data", help="Image folder (subfolders are classes).")],
    guidance: Annotated[str, typer.Option("--guidance", help="Comma-separated guidance scales.")] = "1,1.75,3,5,8",
    out: OptOut = None,
    per_class: PerClass = 10,
    seeds: EvalSeeds = "0",
    steps: Steps = 50,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 8,
    fid: Fid = "auto",
    device: Device = "cpu",
    feature_guidance: FeatureGuidanceStrength = 0.0,
    guidance_schedule: GuidanceSchedule = "all",
    guidance_normalize: GuidanceNormalize = "std",
    resize_mode: ResizeMode = "model",
    control_strength: ControlStrength = 1.0,
    guess_mode: GuessMode = False,
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """FID (or its labelled substitute) and cosine distance versus guidance scale (paper Figure 7).

    Writes sweep.png and sweep.json, plus one evaluation folder per scale.

    Example: featinv eval sweep --run runs/convnext --data val/ --guidance 1,1.75,3,5,8 --per-class 2
    """
    from featinv.cli.boundary import no_partial_output
    from featinv.evaluation.sweep import sweep

    scales = parse_float_list(guidance)
    steering = make_feature_guidance(feature_guidance, guidance_schedule, guidance_normalize)
    target = out or _default_out(run, data, None, sub="sweep-", steering=steering)
    with no_partial_output([target]):
        result = sweep(run, data, guidance=scales, out=target,
                       per_class=per_class, seeds=parse_int_list(seeds), steps=steps, scheduler=scheduler,
                       batch_size=batch_size, fid=fid, device=device, progress=not quiet, feature_guidance=steering,
                       resize_mode=resize_mode, control_strength=control_strength, guess_mode=guess_mode)
    if json_output:
        console.print_json(json.dumps(result.numbers))
        return
    from rich.table import Table

    n = result.numbers
    table = Table(title=f"{n['model']}: guidance sweep")
    from rich.markup import escape

    topk = any(v is not None for v in n["top5"])  # a backbone without a classifier has no top-k column
    for col in ("guidance", n["fid_label"] or "FID", "cosine distance", *(["top5(1)"] if topk else [])):
        table.add_column(escape(col), justify="right")
    for i, g in enumerate(n["guidance"]):
        fid_v, cos_v = n["fid"][i], n["cosine_distance"][i]
        table.add_row(f"{g:g}", "n/a" if fid_v is None else f"{fid_v:.2f}", "n/a" if cos_v is None else f"{cos_v:.3f}",
                      *([f"{100 * n['top5'][i]:.0f}% ({100 * n['top1'][i]:.0f}%)"] if topk else []))
    console.print(table)
    if not topk:
        from featinv.evaluation.evaluate import NO_CLASSIFIER_NOTE

        console.print(f"[yellow]note:[/] {NO_CLASSIFIER_NOTE}")
    console.print(f"plot: {result.plot}")


@eval_app.command("compare")
def eval_compare(
    paths: Annotated[list[Path], typer.Argument(help="Run folders (all their eval/*/) or evaluation folders.")],
    json_output: JsonOutput = False,
) -> None:
    """One table from several evaluations' metrics.json, e.g. pooled vs unpooled runs.

    Example: featinv eval compare runs/convnext runs/convnext-pooled
    """
    from featinv.evaluation.tables import compare

    summaries = compare(paths)
    if json_output:
        console.print_json(json.dumps(summaries))
        return
    _print_summaries(summaries, title="FeatInv comparison")


@eval_app.command("baseline")
def eval_baseline(
    base: Annotated[str, typer.Option("--base", help="Stable Diffusion base: sd:DIR (needs its text encoder).")],
    backbone: Annotated[list[str], typer.Option("--backbone", "-b", help="ImageNet classifier to score (repeatable).")],
    per_class: PerClass = 10,
    classes: Annotated[str | None, typer.Option("--classes", help="Comma-separated ImageNet class indices "
                                                "(default: all 1000).")] = None,
    weights: Annotated[list[str] | None, typer.Option("--weights", help="Weights per --backbone (one for all or one each).")] = None,
    guidance: Annotated[float, typer.Option("--guidance", min=0.0, help="Text guidance scale.")] = 7.5,
    steps: Steps = 50,
    scheduler: Scheduler = "ddim",
    batch_size: BatchSize = 8,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("baseline"),
    limit: Limit = None,
    device: Device = "cpu",
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """Class-prompt baseline (paper Table 3 "MiniSD top5(1)"): images from "a high-quality, detailed, and
    professional image of a CLASS, which is a kind of SUPERCLASS", scored by each backbone.

    Example: featinv eval baseline --base sd:./miniSD --backbone timm:convnext_base --per-class 10 --classes 0,1,2
    """
    from featinv.evaluation.baseline import class_baseline
    from featinv.evaluation.tables import baseline_markdown

    result = class_baseline(base, backbone, per_class=per_class,
                            classes=parse_int_list(classes) if classes else None, out=out,
                            guidance_scale=guidance, steps=steps, scheduler=scheduler, batch_size=batch_size,
                            weights=weights, limit=limit, device=device, progress=not quiet)
    if json_output:
        console.print_json(json.dumps(result.summary))
        return
    from rich.markdown import Markdown

    console.print(Markdown(baseline_markdown(result.summary)))
    console.print(f"results in {result.out}")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
