"""Shared ``Annotated`` option types, so every command spells an option the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from featinv.errors import FeatinvError
from featinv.validation import MAX_INPUT_SIZE


def parse_int_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2], with a clear error for anything that is not an integer."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FeatinvError(f"seeds {text!r} must be integers separated by commas, e.g. 0,1,2") from None


def parse_float_list(text: str) -> list[float]:
    """'1,1.75,3' -> [1.0, 1.75, 3.0]."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FeatinvError(f"{text!r} must be numbers separated by commas, e.g. 1,1.75,3") from None


def parse_options(items: list[str] | None, option: str = "--option", example: str = "clustering=kmeans") -> dict[str, Any]:
    """``["k=4", "clustering=kmeans"]`` -> ``{"k": 4, "clustering": "kmeans"}`` (values parsed as JSON if they can be).

    The one parser of repeatable ``KEY=VALUE`` options (``concepts fit --option``, ``train --encoder-option``);
    ``option`` and ``example`` only shape the error message.
    """
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FeatinvError(f"{option} {item!r} must look like KEY=VALUE, e.g. {option} {example}")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


BackboneSpec = Annotated[str, typer.Option("--backbone", "-b", help="Backbone spec, e.g. timm:convnext_base, "
                                           "torchvision:resnet50, hf:/path/to/saved/model or py:package.module:factory.")]
Layer = Annotated[str | None, typer.Option("--layer", "-l", help="Module path of the layer (default: last spatial map). See `featinv layers SPEC`.")]
Weights = Annotated[str, typer.Option("--weights", help="Backbone weights: pretrained, none, or a local .pth/.pt/.safetensors file.")]
InputSize = Annotated[int | None, typer.Option("--input-size", min=8, max=MAX_INPUT_SIZE, help="Backbone input size in "
                                              "pixels (default: the model's own).")]
Mean = Annotated[str | None, typer.Option("--mean", help="Replace the backbone's normalisation mean, e.g. 0.5,0.5,0.5 "
                                          "(default: the model's own; 0.485,0.456,0.406 for a py: model).")]
Std = Annotated[str | None, typer.Option("--std", help="Replace the backbone's normalisation std, e.g. 0.5,0.5,0.5.")]
BaseSpec = Annotated[str, typer.Option("--base", help="Diffusion base: sd:PATH_OR_HUB_ID or pixel:DIR.")]
RunDir = Annotated[Path, typer.Option("--run", help="A FeatInv run folder (written by `featinv train`).")]
DataDir = Annotated[Path, typer.Option("--data", help="Image folder (recursive; ImageNet layout works).")]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Seeds = Annotated[str, typer.Option("--seeds", help="Comma-separated integer seeds, e.g. 0,1,2.")]
Steps = Annotated[int, typer.Option("--steps", min=1, help="Denoising steps.")]
Guidance = Annotated[float | None, typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale (default: 1.75 unpooled, 8 pooled).")]
Scheduler = Annotated[str, typer.Option("--scheduler", help="Sampler: ddim, dpm++ or unipc.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per batch.")]
Device = Annotated[str, typer.Option("--device", help="torch device, e.g. cpu or cuda.")]
Pooled = Annotated[bool, typer.Option("--pooled/--unpooled", help="Condition on the pooled feature vector (paper's baseline).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Bf16 = Annotated[bool, typer.Option("--bf16", help="bfloat16 autocast for the denoiser (CUDA only).")]
FeatureGuidanceStrength = Annotated[float, typer.Option(
    "--feature-guidance", help="Feature guidance strength S: steer sampling so the backbone sees the target map "
    "(0 = the paper's sampler; 0.1 recommended, see docs/guidance.md; large values fool the backbone).")]
GuidanceSchedule = Annotated[str, typer.Option(
    "--guidance-schedule", help="Steps that feature guidance acts on: all, ramp, first:K or last:K.")]
GuidanceNormalize = Annotated[str, typer.Option(
    "--guidance-normalize", help="Feature-guidance gradient normalisation: std (per sample) or none.")]


ControlStrength = Annotated[float, typer.Option(
    "--control-strength", min=0.0, help="Scale on every ControlNet residual (the authors' control strength; "
    "1 = the paper's sampler).")]
GuessMode = Annotated[bool, typer.Option(
    "--guess-mode", help="The authors' guess mode: no features in the unconditional branch, residual scales "
    "0.825^(12-i) from shallow to deep (off = the paper's sampler).")]
DryRun = Annotated[bool, typer.Option(
    "--dry-run", help="Resolve every setting and print them with the backbone grid, base, data found, estimated "
    "FLOPs and time (from the recorded benchmarks); sample nothing, write nothing.")]
PresetName = Annotated[str | None, typer.Option(
    "--preset", help="A named setup, e.g. paper:resnet50, paper:convnext, paper:swinv2 (+ -pooled); "
    "`featinv presets` shows every value it sets. Options given explicitly override it.")]


def given_options(ctx: typer.Context) -> set[str]:
    """The parameters set on the command line (or from the environment), i.e. not left at their defaults:
    those a preset must not override."""
    return {name for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") in ("COMMANDLINE", "ENVIRONMENT")}


def apply_preset(values: dict[str, Any], preset_values: dict[str, Any], given: set[str],
                 option_names: dict[str, str] | None = None) -> dict[str, Any]:
    """``values`` with every setting the user did not give replaced by the preset's (``option_names`` maps a
    setting to the CLI parameter that sets it, where they differ)."""
    names = option_names or {}
    return {**values, **{key: value for key, value in preset_values.items() if names.get(key, key) not in given}}


def make_feature_guidance(strength: float, schedule: str, normalize: str) -> Any:
    """The three guidance options as one :class:`~featinv.diffusion.guidance.FeatureGuidance` (bad values: one line)."""
    from featinv.diffusion.guidance import FeatureGuidance

    return FeatureGuidance(strength, schedule=schedule, normalize=normalize)
