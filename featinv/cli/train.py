"""`featinv train`: fill a TrainConfig from options and make one call to ``featinv.train``.

The options of the training loop (steps, checkpoints, precision ...) are shared with ``featinv base train``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from featinv.cli.options import (
    BackboneSpec,
    BaseSpec,
    DataDir,
    InputSize,
    Layer,
    Mean,
    OutDir,
    Pooled,
    PresetName,
    Quiet,
    Std,
    Weights,
    apply_preset,
    given_options,
    parse_options,
)
from featinv.console import console
from featinv.validation import MAX_EPOCHS

Epochs = Annotated[float, typer.Option("--epochs", min=0.0, max=MAX_EPOCHS, help="Passes over the data (paper: 3).")]
MaxSteps = Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer steps (overrides --epochs).")]
TrainBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per process and micro-batch (paper: 8).")]
GradAccum = Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-batches per optimizer step.")]
LearningRate = Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate.")]
WarmupSteps = Annotated[int, typer.Option("--warmup-steps", min=0, help="Linear lr warm-up steps.")]
MaxSamples = Annotated[int | None, typer.Option("--max-samples", min=1, help="Train on a seeded random subset of this many images.")]
MixedPrecision = Annotated[str, typer.Option("--mixed-precision", help="no, bf16 or fp16 (fp16 needs a GPU).")]
GradCkpt = Annotated[bool, typer.Option("--gradient-checkpointing", help="Recompute activations in backward (less memory).")]
Workers = Annotated[int, typer.Option("--num-workers", min=0, help="DataLoader worker processes (decode + crop).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of every random choice (data order, crops, noise).")]
CkptEvery = Annotated[int, typer.Option("--checkpoint-every", min=1, help="Write a checkpoint every N steps.")]
KeepCkpts = Annotated[int, typer.Option("--keep-checkpoints", min=1, help="Keep the newest K checkpoints.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its newest checkpoint.")]
LogEvery = Annotated[int, typer.Option("--log-every", min=1, help="Append metrics to metrics.jsonl every N steps.")]
ValidateEvery = Annotated[int, typer.Option("--validate-every", min=0, help="Save a validation PNG grid every N steps (0: at the end only).")]
ValSteps = Annotated[int, typer.Option("--val-steps", min=1, max=1000, help="Denoising steps for validation grids "
                                       "(at most the base's 1000 training timesteps).")]
TensorBoard = Annotated[bool, typer.Option("--tensorboard", help="Also log to TensorBoard (OUT/logs) via accelerate.")]
EncoderOptions = Annotated[list[str] | None, typer.Option(
    "--encoder-option", help="Feature encoder option KEY=VALUE (repeatable), e.g. hidden=256 for conv; "
    "the options are the encoder class's __init__ arguments.")]
ConsistencyWeight = Annotated[float, typer.Option(
    "--consistency-weight", help="Add W·(1 − cosine) between the backbone's view of the one-step clean estimate "
    "and the conditioning map to the loss (ControlNet++-style feature consistency; 0: the paper's loss).")]
ConsistencyMaxT = Annotated[int | None, typer.Option(
    "--consistency-max-t", help="Apply the consistency term only at timesteps below T (of the base's 1000; "
    "default 400): at high noise the one-step estimate is too blurry to judge.")]
ConsistencyFraction = Annotated[float, typer.Option(
    "--consistency-fraction", help="Part of each batch (drawn at random, in (0, 1]) the consistency term is "
    "computed on; lower is cheaper.")]
TrainDevice = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: what accelerate picks).")]
ChannelsLast = Annotated[bool | None, typer.Option(
    "--channels-last/--no-channels-last", help="NHWC weights and activations (default: on for CUDA, off on a CPU).")]
OptimizerImpl = Annotated[str, typer.Option(
    "--optimizer-impl", help="AdamW kernel: auto (fused on CUDA, torch's default on a CPU), fused, foreach or loop.")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the networks of the training step; the first step compiles (minutes) and "
    "is reported apart from samples/s.")]
CompileMode = Annotated[str | None, typer.Option(
    "--compile-mode", help="torch.compile mode with --compile: default, reduce-overhead (CUDA graphs, for small "
    "batches), max-autotune or max-autotune-no-cudagraphs.")]


def loop_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Map the shared CLI option values to LoopConfig fields."""
    return {
        "data": values["data"], "out": values["out"], "epochs": values["epochs"], "max_steps": values["max_steps"],
        "batch_size": values["batch_size"], "grad_accum": values["grad_accum"], "lr": values["lr"],
        "warmup_steps": values["warmup_steps"], "max_samples": values["max_samples"],
        "mixed_precision": values["mixed_precision"], "gradient_checkpointing": values["gradient_checkpointing"],
        "num_workers": values["num_workers"], "seed": values["seed"], "checkpoint_every": values["checkpoint_every"],
        "keep_checkpoints": values["keep_checkpoints"], "resume": values["resume"], "log_every": values["log_every"],
        "validate_every": values["validate_every"], "val_steps": values["val_steps"],
        "tracker": "tensorboard" if values["tensorboard"] else None, "device": values["device"],
        "progress": not values["quiet"], "channels_last": values["channels_last"],
        "optimizer_impl": values["optimizer_impl"], "compile": values["compile"], "compile_mode": values["compile_mode"],
    }


#: TrainConfig fields set by a CLI option of another name (a preset must not override a given option)
_OPTION_OF_FIELD = {"backbone_weights": "weights", "hflip": "no_flips", "vflip": "no_flips", "preset": "-"}


def train_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Map the ``featinv train`` option values to TrainConfig fields (before any preset is applied)."""
    encoder_kwargs = parse_options(values["encoder_option"], option="--encoder-option", example="hidden=256") or None
    max_t = values["consistency_max_t"]
    return dict(**loop_kwargs(values), encoder_kwargs=encoder_kwargs, backbone_weights=values["weights"],
                hflip=not values["no_flips"], vflip=not values["no_flips"],
                **{key: values[key] for key in ("backbone", "base", "layer", "pooled", "encoder", "input_size",
                                                "resolution", "cache_features", "cache_views", "cache_latents", "frozen_precision",
                                                "features_from",
                                                "consistency_weight", "consistency_fraction")},
                **({"consistency_max_t": max_t} if max_t is not None else {}))


def resolved_config(ctx: typer.Context, values: dict[str, Any]) -> Any:
    """The TrainConfig the options describe: the preset's values where no option was given, then the backbone
    built with --mean/--std when they are (a built backbone carries them into the run's config)."""
    from featinv.training.config import TrainConfig

    settings = train_settings(values)
    if values["preset"] is not None:
        from featinv.presets import get

        settings = apply_preset(settings, get(values["preset"]).train_settings(), given_options(ctx), _OPTION_OF_FIELD)
    if values["mean"] is not None or values["std"] is not None:
        from featinv.features.backbone import backbone as make_backbone

        settings["backbone"] = make_backbone(settings["backbone"], layer=settings["layer"],
                                             weights=settings["backbone_weights"], input_size=settings["input_size"],
                                             mean=values["mean"], std=values["std"])
    return TrainConfig(**settings)


def train(
    ctx: typer.Context,
    data: DataDir,
    out: OutDir,
    preset: PresetName = None,
    backbone: BackboneSpec = "timm:convnext_base",
    base: BaseSpec = "sd:lambdalabs/miniSD-diffusers",
    layer: Layer = None,
    pooled: Pooled = False,
    encoder: Annotated[str, typer.Option("--encoder", help="Feature encoder: conv or perceiver (or a plugin's).")] = "conv",
    encoder_option: EncoderOptions = None,
    weights: Weights = "pretrained",
    input_size: InputSize = None,
    resolution: Annotated[int | None, typer.Option("--resolution", min=8, help="The diffusion base's image size "
                                                   "in pixels (default: what its configs say; they must agree).")] = None,
    mean: Mean = None,
    std: Std = None,
    epochs: Epochs = 3.0,
    max_steps: MaxSteps = None,
    batch_size: TrainBatch = 8,
    grad_accum: GradAccum = 1,
    lr: LearningRate = 1e-5,
    warmup_steps: WarmupSteps = 0,
    max_samples: MaxSamples = None,
    cache_features: Annotated[bool, typer.Option("--cache-features", help="Compute features + targets once for fixed "
                                                 "crops and train from that cache (no augmentation; fast on a CPU).")] = False,
    cache_views: Annotated[int, typer.Option("--cache-views", min=1, help="Fixed crops per image in the cache.")] = 1,
    cache_latents: Annotated[bool, typer.Option("--cache-latents", help="With --cache-features: VAE-encode the fixed "
                                                "crops once too (no encoder in the step).")] = False,
    no_flips: Annotated[bool, typer.Option("--no-flips", help="No horizontal/vertical flips.")] = False,
    features_from: Annotated[str, typer.Option("--features-from", help="What the backbone sees: crop (the crop at "
                                               "its input size, the paper) or target (the base-resolution image "
                                               "resized up, as it sees reconstructions; for small bases).")] = "crop",
    consistency_weight: ConsistencyWeight = 0.0,
    consistency_max_t: ConsistencyMaxT = None,
    consistency_fraction: ConsistencyFraction = 1.0,
    mixed_precision: MixedPrecision = "no",
    frozen_precision: Annotated[str, typer.Option(
        "--frozen-precision", help="Weights of the frozen UNet/VAE/backbone: auto (the --mixed-precision dtype on "
        "CUDA, else fp32), fp32, bf16 or fp16.")] = "auto",
    gradient_checkpointing: GradCkpt = False,
    channels_last: ChannelsLast = None,
    optimizer_impl: OptimizerImpl = "auto",
    compile: Compile = False,
    compile_mode: CompileMode = None,
    num_workers: Workers = 2,
    seed: Seed = 0,
    checkpoint_every: CkptEvery = 500,
    keep_checkpoints: KeepCkpts = 3,
    resume: Resume = False,
    log_every: LogEvery = 10,
    validate_every: ValidateEvery = 0,
    val_steps: ValSteps = 20,
    tensorboard: TensorBoard = False,
    device: TrainDevice = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve every setting and print them with the "
                                          "backbone grid, base, parameter counts, estimated FLOPs and time; train "
                                          "nothing, write nothing.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train FeatInv: a ControlNet on a frozen diffusion base, conditioned on a backbone's feature map.

    Paper defaults: AdamW, lr 1e-5, batch 8, 3 epochs, 15% conditioning dropout, RandomResizedCrop + flips.
    Ctrl-C writes a checkpoint; --resume continues exactly. Several GPUs / nodes:
    accelerate launch -m featinv train ...

    --preset paper:convnext (see `featinv presets`) sets the paper's backbone, weights, layer, input size,
    base, optimiser, augmentation and guidance; options given explicitly override it. --dry-run prints
    every resolved setting with the feature grid, parameter counts and step counts, and writes nothing.

    Example: featinv train --preset paper:convnext --data imagenet/train --out runs/convnext
    """
    from featinv.training.loop import train as run

    config = resolved_config(ctx, dict(locals()))
    if dry_run:
        print_plan(config)
        return
    path = run(config)
    console.print(f"FeatInv run written to [bold]{path}[/] (load with FeatInv.from_pretrained or --run {path})")


def print_plan(config: Any) -> None:
    """The dry run's table: every resolved setting, then the shapes, counts and FLOPs they imply (nothing written)."""
    import os

    from featinv.cli.dry_run import print_plan as print_rows
    from featinv.training.plan import training_plan

    print_rows("featinv train --dry-run (nothing trained, nothing written)",
               training_plan(config, world_size=int(os.environ.get("WORLD_SIZE", "1"))))


def register(app: typer.Typer) -> None:
    app.command("train")(train)

