"""Training: one generic loop shared by FeatInv (``featinv train``) and the pixel base (``featinv base train``).

The loop knows nothing about ControlNets: a *task* (:mod:`featinv.training.tasks`) supplies the trainable
parameters, the dataset, how a batch becomes model inputs, the loss, a validation grid and how to save the
result; the settings are in :mod:`featinv.training.config`. The loop adds everything that makes long runs safe:

- HF Accelerate for devices, multi-GPU/multi-node (``accelerate launch``), mixed precision (bf16/fp16);
  each process trains on its own disjoint shard of every global batch (:class:`ShardedBatches`), with its rows
  of noise, timesteps and dropout drawn for the whole global batch (:mod:`featinv.diffusion.draws`), so N
  processes train the weights one process would with the same global batch.
- Exact resume: all randomness (data order, crops, flips, dropout of the conditioning, noise and
  timesteps) is derived from ``(seed, step)``; checkpoints hold weights, optimizer, lr-scheduler,
  grad-scaler and RNG state, are written atomically and rotated (newest K kept).
- Ctrl-C / SIGTERM finish the current step, write a checkpoint + a loadable model, then stop.
- A non-finite loss stops the run before the optimizer touches the weights (last good checkpoint kept).
- A rich progress bar (loss, samples/s, ETA), ``metrics.jsonl``, validation PNG grids, optional TensorBoard.

:func:`run_training` reads as its steps: set up (and resume), the data loader, then per step one
optimisation step, logging, validation and checkpoints, and finally finishing or stopping cleanly.
(Just over 400 lines: the loop and the small pieces only it uses — stop request, accelerator, lr lambda;
the run's files live in :mod:`featinv.training.run`, the speed settings in :mod:`featinv.training.speed`.)
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from featinv.diffusion.draws import BatchDraws
from featinv.errors import FeatinvError
from featinv.io import ensure_output_dir, locks_output, read_json, write_json
from featinv.training.checkpoint import latest_checkpoint, load_checkpoint, load_parameter_state, restore_rng
from featinv.training.config import BaseTrainConfig, LoopConfig, TrainConfig
from featinv.training.data import Schedule, ShardedBatches, TensorSamples, mix_seed
from featinv.training.run import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    STATE_FILE,
    MetricsWindow,
    TrainingRun,
    truncate_metrics,
)
from featinv.training.speed import SpeedSettings, make_optimizer, resolve_speed
from featinv.training.tasks import FeatInvTask, PixelBaseTask, Task

StepCallback = Callable[[int, float], None]


# -------------------------------------------------------------------------------------- public API
def train(config: TrainConfig, on_step: StepCallback | None = None) -> Path:
    """Train FeatInv (ControlNet + feature encoder on a frozen base); returns the run folder.

    The folder is loadable with ``FeatInv.from_pretrained(out)`` and holds ``checkpoints/``,
    ``metrics.jsonl``, ``validation/*.png`` and ``train_state.json``. ``on_step(step, loss)`` is called
    after every optimizer step (notebooks, tests).
    """
    if not isinstance(config, TrainConfig):
        raise FeatinvError(f"train() takes a TrainConfig, got {type(config).__name__}; use featinv.TrainConfig(...)")

    def make(accelerator: Any) -> Task:
        return FeatInvTask(config, accelerator.device, accelerator.is_main_process, accelerator.wait_for_everyone)

    return run_training(config, make, on_step=on_step)


def train_base(config: BaseTrainConfig, on_step: StepCallback | None = None) -> Path:
    """Train a small pixel-space diffusion base; the folder loads as ``pixel:OUT``."""
    if not isinstance(config, BaseTrainConfig):
        raise FeatinvError(f"train_base() takes a BaseTrainConfig, got {type(config).__name__}")
    return run_training(config, lambda accelerator: PixelBaseTask(config, accelerator.device), on_step=on_step)


def training_status(out: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``train_state.json`` says about a run folder (status, step, checkpoint)."""
    return read_json(Path(out) / STATE_FILE, what="training state")


@locks_output("config.out")
def run_training(config: LoopConfig, make_task: Callable[[Any], Task], on_step: StepCallback | None = None) -> Path:
    """The shared loop. ``make_task(accelerator)`` builds the model + data once devices are known."""
    run, existing = _set_up(config, make_task)
    _resume_or_start(run, existing)
    loader = _data_loader(run)
    run.task.train_mode(True)
    batches = iter(loader)
    try:
        _train_steps(run, batches, on_step)
        return _complete(run)
    except KeyboardInterrupt:
        _stop_cleanly(run)
        raise
    except BaseException as exc:
        if isinstance(exc, Exception):
            _record_failure(run, exc)
        _finish(run.accelerator, config)
        raise


# ------------------------------------------------------------------------------ set-up and resume
def _set_up(config: LoopConfig, make_task: Callable[[Any], Task]) -> tuple[TrainingRun, Path | None]:
    """Devices, the task, the schedule and the optimizer; also the checkpoint to resume from (if any)."""
    config.check()
    out = ensure_output_dir(config.out)
    accelerator = _make_accelerator(config, out)
    if accelerator.device.type == "cuda" and config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    existing = latest_checkpoint(out / CHECKPOINT_DIR)
    if existing is not None and not config.resume:
        raise FeatinvError(f"{out} already holds a training run (checkpoint {existing.name}); pass --resume to "
                           "continue it or choose a new --out folder")

    task = make_task(accelerator)
    task.dataset()[(0, config.seed)]  # decode one sample now: data that cannot be decoded fails before any write
    schedule = Schedule(n=len(task.dataset()), batch_size=config.batch_size,
                        world_size=accelerator.num_processes, grad_accum=config.grad_accum)
    total_steps = schedule.total_steps(config.epochs, config.max_steps)
    speed = resolve_speed(config, accelerator.device)
    fingerprint = _resume_fingerprint(config, task, schedule, speed)
    named = task.named_trainable()
    if config.gradient_checkpointing:
        task.enable_gradient_checkpointing()
    task.speed_up(speed)

    optimizer = make_optimizer([p for _, p in named], config, speed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))
    loss_module, optimizer = accelerator.prepare(_LossModule(task), optimizer)
    run = TrainingRun(config=config, out=out, accelerator=accelerator, task=task, schedule=schedule,
                      total_steps=total_steps, fingerprint=fingerprint, named=named, optimizer=optimizer,
                      scheduler=scheduler, loss_module=loss_module, speed=speed)
    run.timings.update(getattr(task, "timings", {}))
    return run, existing


def _resume_or_start(run: TrainingRun, existing: Path | None) -> None:
    """Continue from ``existing`` (same settings only) or start afresh; then record the config."""
    config = run.config
    if existing is not None:
        _resume(run, existing)
    elif config.resume:
        run.say(f"no checkpoint in {run.out}; starting a new run")
    if existing is None and run.is_main:  # lines of an attempt killed before its first checkpoint would repeat
        truncate_metrics(run.out / METRICS_FILE, 0)
    schedule = run.schedule
    run.say(f"training {run.task.summary()}; {run.total_steps} steps of {schedule.samples_per_step} samples "
            f"({schedule.steps_per_epoch} steps/epoch) on {run.accelerator.num_processes} x {run.device}")
    if run.speed != SpeedSettings():
        run.say("speed settings: " + ", ".join(f"{k} {v}" for k, v in run.speed.describe().items()))
    if run.is_main:
        write_json(run.out / CONFIG_FILE, config.to_json())
    if config.tracker and run.is_main:
        run.accelerator.init_trackers("featinv", config={k: v for k, v in config.to_json().items()
                                                         if isinstance(v, (int, float, str, bool))})


def _resume(run: TrainingRun, existing: Path) -> None:
    """Load weights, optimizer, scheduler, scaler and this process's RNG state from a checkpoint."""
    ckpt = load_checkpoint(existing)
    stored = ckpt.state.get("fingerprint", {})
    changed = sorted(k for k in run.fingerprint.keys() | stored.keys() if stored.get(k) != run.fingerprint.get(k))
    if changed:
        raise FeatinvError(f"cannot resume from {existing}: settings changed ({', '.join(changed)}); use the "
                           "original settings or a new --out folder")
    accelerator = run.accelerator
    load_parameter_state(run.named, ckpt.params)
    run.optimizer.load_state_dict(ckpt.optimizer)
    run.scheduler.load_state_dict(ckpt.scheduler)
    if ckpt.scaler is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(ckpt.scaler)
    if len(ckpt.rng) > accelerator.process_index:
        restore_rng(ckpt.rng[accelerator.process_index])
    run.step = run.last_saved = ckpt.step
    if run.is_main:
        truncate_metrics(run.out / METRICS_FILE, run.step)
    run.say(f"resuming from {existing} (step {run.step}/{run.total_steps})")


def _data_loader(run: TrainingRun) -> torch.utils.data.DataLoader:
    """Batches from the resume step on; workers only decode and crop (none for in-memory cached features)."""
    config = run.config
    sampler = ShardedBatches(run.schedule, seed=config.seed, rank=run.accelerator.process_index, start_step=run.step,
                             total_steps=run.total_steps)
    dataset = run.task.dataset()
    workers = 0 if isinstance(dataset, TensorSamples) else config.num_workers
    # pinned host memory makes the copies to the GPU asynchronous; persistent workers survive a re-iteration
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                       pin_memory=run.device.type == "cuda", persistent_workers=workers > 0)


# ------------------------------------------------------------------------------------------ the steps
def _train_steps(run: TrainingRun, batches: Iterator[Any], on_step: StepCallback | None) -> None:
    """Optimisation steps until the schedule ends; a stop request (Ctrl-C, SIGTERM) raises KeyboardInterrupt."""
    from rich.progress import TextColumn

    from featinv.progress import make_progress

    bar = make_progress(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} samples/s"))
    show = run.config.progress and run.is_main
    window = MetricsWindow()
    with _StopRequest() as stop, (bar if show else contextlib.nullcontext()):
        progress_task = bar.add_task("training", total=run.total_steps, completed=run.step, loss="-", speed="-")
        while run.step < run.total_steps:
            loss_value, flags = _optimisation_step(run, batches, stop, window)
            if run.speed.compile and "compile_warmup_s" not in run.timings:
                window.exclude_warm_up(run)
            if run.step % run.config.log_every == 0 or run.step == run.total_steps:
                window.write(run, bar, progress_task)
            if show:
                bar.update(progress_task, completed=run.step)
            if on_step is not None:
                on_step(run.step, loss_value)
            _validate_and_checkpoint(run)
            # one process: stop at once; several: stop when the (all-reduced) flag says so, all together
            if (stop.signal is not None) if run.accelerator.num_processes == 1 else float(flags[1]) > 0:
                raise KeyboardInterrupt


def _optimisation_step(run: TrainingRun, batches: Iterator[Any], stop: _StopRequest,
                       window: MetricsWindow) -> tuple[float, torch.Tensor]:
    """Accumulate gradients over the micro-batches, then update; returns the loss (mean over processes) and
    the all-reduced ``[loss, stop requested]`` flags."""
    config, accelerator, device = run.config, run.accelerator, run.device
    step_loss = torch.zeros((), device=device)
    for micro in range(config.grad_accum):
        batch = next(batches)
        inputs = run.task.inputs(batch, device)
        n = len(next(iter(inputs.values())))
        generator = _micro_batch_draws(config.seed, run.step, micro, accelerator.process_index, n,
                                       accelerator.num_processes)
        drop = conditioning_drop(n, config.drop_prob, generator)
        sync = micro == config.grad_accum - 1
        with (contextlib.nullcontext() if sync else accelerator.no_sync(run.loss_module)), accelerator.autocast():
            loss = run.loss_module(inputs, drop.to(device), generator) / config.grad_accum
        accelerator.backward(loss)
        step_loss += loss.detach().float()
        window.samples += n * accelerator.num_processes
    # one small all-reduce: mean loss over processes, and whether any process was asked to stop
    flags = torch.stack([step_loss, torch.tensor(float(stop.signal is not None), device=device)])
    flags = accelerator.reduce(flags, reduction="sum") if accelerator.num_processes > 1 else flags
    loss_value = float(flags[0]) / accelerator.num_processes
    if not math.isfinite(loss_value):
        _fail_on_non_finite(run, loss_value)
    _update(run)
    window.losses.append(loss_value)
    return loss_value, flags


def _update(run: TrainingRun) -> None:
    """Clip, step the optimizer and the lr schedule; ``run.updating`` marks the window a Ctrl-C must not cut."""
    if run.config.max_grad_norm:
        run.accelerator.clip_grad_norm_(run.params, run.config.max_grad_norm)
    run.updating = True
    run.optimizer.step()
    if not getattr(run.optimizer, "step_was_skipped", False):
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.updating = False


def _fail_on_non_finite(run: TrainingRun, loss_value: float) -> None:
    """Stop before the optimizer touches the weights; the last good checkpoint stays the newest."""
    run.optimizer.zero_grad(set_to_none=True)
    good = latest_checkpoint(run.ckpt_root)
    run.write_state("failed", run.step, {"error": f"loss {loss_value}"})
    where = f"last good checkpoint: {good}" if good else "no checkpoint was written yet"
    raise FeatinvError(f"training loss became {loss_value} at step {run.step + 1} ({where}); lower --lr, "
                       "use --mixed-precision bf16 or no, then --resume")


def _validate_and_checkpoint(run: TrainingRun) -> None:
    """Validation grids and checkpoints due at this step (the final ones are written by :func:`_complete`)."""
    config, step = run.config, run.step
    if config.validate_every and step % config.validate_every == 0 and step < run.total_steps:
        run.validate(step)
    if step % config.checkpoint_every == 0 and step < run.total_steps:
        run.checkpoint(step)


# ----------------------------------------------------------------------------------------- finishing
def _complete(run: TrainingRun) -> Path:
    """The last checkpoint, the loadable model, a final validation grid and ``status: complete``."""
    if run.last_saved != run.step:
        run.checkpoint(run.step)
    if run.is_main:
        run.task.save(run.out)
        run.validate(run.step)
    run.write_state("complete", run.step, {"checkpoint": str(latest_checkpoint(run.ckpt_root)), **run.timings})
    if run.is_main and isinstance(run.config, TrainConfig):  # a FeatInv run folder can be shared as it is
        from featinv.report.card import write_model_card

        write_model_card(run.out)
    run.accelerator.wait_for_everyone()
    _finish(run.accelerator, run.config)
    run.say(f"done: {run.step} steps; model saved in {run.out}")
    return run.out


def _record_failure(run: TrainingRun, exc: Exception) -> None:
    """``status: failed`` with the error and the newest complete checkpoint, so the folder never claims to be
    running after the process ended (e.g. a full disk while a checkpoint was written). When even that small
    file cannot be written, the status file is removed: no status is truer than a stale "running"."""
    good = latest_checkpoint(run.ckpt_root)
    error = (str(exc).splitlines() or [type(exc).__name__])[0]
    try:
        run.write_state("failed", run.step, {"error": error, "checkpoint": str(good) if good else None})
    except OSError:
        if run.is_main:
            (run.out / STATE_FILE).unlink(missing_ok=True)


def _stop_cleanly(run: TrainingRun) -> None:
    """After Ctrl-C: the weights are those after a whole step, so checkpoint + model agree with ``run.step``."""
    accelerator = run.accelerator
    if run.updating:  # a second Ctrl-C inside the optimizer update: the weights are half-updated
        accelerator.print(f"stopped during an update; the last checkpoint is in {run.ckpt_root}")
        _finish(accelerator, run.config)
        return
    if run.last_saved != run.step:
        run.checkpoint(run.step)
    if run.is_main:
        run.task.save(run.out)
    run.write_state("interrupted", run.step, {"checkpoint": str(latest_checkpoint(run.ckpt_root))})
    accelerator.print(f"interrupted at step {run.step}/{run.total_steps}; checkpoint and model saved in {run.out}; "
                      "continue with --resume")
    _finish(accelerator, run.config)


def _finish(accelerator: Any, config: LoopConfig) -> None:
    if config.tracker and accelerator.is_main_process:
        accelerator.end_training()


# ------------------------------------------------------------------------------------------- helpers
def _micro_batch_draws(seed: int, step: int, micro: int, rank: int, rows: int, world_size: int) -> BatchDraws:
    """The randomness of this process's rows of global micro-batch ``(step, micro)``: one generator per micro-batch,
    the same on every process, whose draws cover the whole global micro-batch (so the weights do not depend on
    how many processes share it). The trailing 0 of the seed keeps the single-process streams of earlier versions."""
    generator = torch.Generator().manual_seed(mix_seed(seed, step, micro, 0))
    return BatchDraws(generator, offset=rank * rows, total=rows * world_size)


def conditioning_drop(n: int, prob: float, generator: torch.Generator | BatchDraws) -> torch.Tensor:
    """Which samples lose their conditioning (feature map zeroed and prompt emptied together): Bernoulli(prob)."""
    return BatchDraws.of(generator).rand(n) < prob


class _LossModule(torch.nn.Module):
    """Registers exactly the trainable parameters, so DDP syncs them and nothing else; forward = task loss."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = [task]  # a list keeps the task's frozen modules out of this module's registry
        self.trainable = torch.nn.ParameterList([p for _, p in task.named_trainable()])

    def forward(self, inputs: dict[str, torch.Tensor], drop: torch.Tensor, generator: BatchDraws) -> torch.Tensor:
        return self.task[0].loss(inputs, drop, generator)


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops (weights stay consistent)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _make_accelerator(config: LoopConfig, out: Path) -> Any:
    """An ``Accelerator`` for this run's device and precision (bad combinations are one-line errors)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import ProjectConfiguration

    state = PartialState() if PartialState._shared_state else None
    if state is None or state.num_processes == 1:
        AcceleratorState._reset_state()  # single process: let each train() call pick its own precision
    cpu = config.device == "cpu" or (config.device is None and not torch.cuda.is_available())
    if config.device not in (None, "cpu") and not str(config.device).startswith("cuda"):
        raise FeatinvError(f"device {config.device!r} unsupported for training; use cpu or cuda "
                           "(several GPUs: `accelerate launch -m featinv train ...`)")
    if config.device is not None:
        from featinv.validation import check_device

        check_device(config.device)  # "cuda" on a machine without a GPU would silently train on the CPU
    if config.mixed_precision == "fp16" and cpu:
        raise FeatinvError("fp16 mixed precision needs a GPU; use --mixed-precision bf16 or no on a CPU")
    log_with = None
    if config.tracker == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise FeatinvError("TensorBoard logging needs the tensorboard package; pip install tensorboard") from None
        log_with = "tensorboard"
    try:
        return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision, log_with=log_with,
                           project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    except ValueError as exc:
        raise FeatinvError(f"cannot set up training ({exc}); check --device / --mixed-precision") from None


def _lr_lambda(config: LoopConfig, total_steps: int) -> Callable[[int], float]:
    """The lr factor per step: linear warm-up, then constant or a cosine decay to 0 at the last step."""
    warmup = max(0, int(config.warmup_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def _resume_fingerprint(config: LoopConfig, task: Task, schedule: Schedule, speed: SpeedSettings) -> dict[str, Any]:
    """Settings that fix the data order and the model; a resumed run must match them. Of the speed settings
    only the frozen networks' precision changes what is computed (layout, kernels and compilation do not, so a
    run may resume on another machine without them); it is left out at fp32 so older runs still resume."""
    frozen = speed.describe()["frozen_precision"]
    return {"kind": task.kind, "seed": config.seed, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
            "world_size": schedule.world_size, "n_samples": schedule.n, **task.describe(),
            **({"frozen_precision": frozen} if frozen != "fp32" else {})}

