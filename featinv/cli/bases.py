"""`featinv base train`: a small pixel-space diffusion base trained from an image folder (loads as pixel:OUT)."""

from __future__ import annotations

from typing import Annotated

import typer

from featinv.cli.options import DataDir, OutDir, Quiet
from featinv.cli.train import (
    ChannelsLast,
    CkptEvery,
    Compile,
    CompileMode,
    Epochs,
    GradAccum,
    GradCkpt,
    KeepCkpts,
    LearningRate,
    LogEvery,
    MaxSamples,
    MaxSteps,
    MixedPrecision,
    OptimizerImpl,
    Resume,
    Seed,
    TensorBoard,
    TrainBatch,
    TrainDevice,
    ValidateEvery,
    ValSteps,
    WarmupSteps,
    Workers,
    loop_kwargs,
)
from featinv.console import console
from featinv.errors import FeatinvError

base_app = typer.Typer(help="Diffusion bases: train a small pixel-space base for offline / CPU use.",
                       no_args_is_help=True)


@base_app.command("train")
def base_train(
    data: DataDir,
    out: OutDir,
    resolution: Annotated[int, typer.Option("--resolution", help="Image size in pixels: 32 or 64.")] = 32,
    widths: Annotated[str, typer.Option("--widths", help="UNet block widths, comma-separated.")] = "32,64,64",
    prediction: Annotated[str, typer.Option("--prediction", help="Training target: epsilon or v_prediction.")] = "epsilon",
    epochs: Epochs = 50.0,
    max_steps: MaxSteps = None,
    batch_size: TrainBatch = 16,
    grad_accum: GradAccum = 1,
    lr: LearningRate = 2e-4,
    warmup_steps: WarmupSteps = 0,
    max_samples: MaxSamples = None,
    mixed_precision: MixedPrecision = "no",
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
    quiet: Quiet = False,
) -> None:
    """Train a pixel-space diffusion base from scratch; use the folder as --base pixel:OUT.

    Resumable like `featinv train` (Ctrl-C writes a checkpoint; --resume continues).

    Example: featinv base train --data photos/ --resolution 32 --out bases/pixel32 --max-steps 2000
    """
    from featinv.cli.options import parse_int_list
    from featinv.training.config import BaseTrainConfig
    from featinv.training.loop import train_base

    values = dict(locals())
    try:
        width_list = tuple(parse_int_list(widths))
    except FeatinvError:
        width_list = ()
    if not width_list:
        raise FeatinvError(f"--widths {widths!r} must be integers separated by commas, e.g. 32,64,64")
    config = BaseTrainConfig(**loop_kwargs(values), resolution=resolution, widths=width_list,
                             prediction_type=prediction)
    path = train_base(config)
    console.print(f"pixel base written to [bold]{path}[/] (use --base pixel:{path})")


def register(app: typer.Typer) -> None:
    app.add_typer(base_app, name="base")
