"""A training run in progress: its state, and the files it keeps in its run folder.

:mod:`featinv.training.loop` drives a :class:`TrainingRun` step by step; this module owns what the folder
holds and how each file is written: ``checkpoints/`` (atomic, rotated), ``train_state.json`` (the status
that ``training_status`` reads and the demo uses to reuse finished stages), the append-only
``metrics.jsonl`` (truncated to the checkpoint on resume), ``validation/step-N.png`` grids and
``train_config.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from featinv.data import to_pil
from featinv.io import atomic_path, write_json, write_text
from featinv.training.checkpoint import capture_rng, parameter_state, save_checkpoint
from featinv.training.config import LoopConfig
from featinv.training.data import Schedule
from featinv.training.speed import SpeedSettings
from featinv.training.tasks import Task

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "train_state.json"
CONFIG_FILE = "train_config.json"
VALIDATION_DIR = "validation"


@dataclass
class TrainingRun:
    """One training run once set up: what every step reads and writes, and the run folder's files."""

    config: LoopConfig
    out: Path
    accelerator: Any
    task: Task
    schedule: Schedule
    total_steps: int
    fingerprint: dict[str, Any]
    named: list[tuple[str, torch.nn.Parameter]]
    optimizer: Any
    scheduler: Any
    loss_module: Any
    step: int = 0
    last_saved: int = -1                   # the step of the newest checkpoint (-1: none yet)
    updating: bool = False                 # inside the optimizer update: an interrupt here half-updates weights
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    timings: dict[str, float] = field(default_factory=dict)  # one-off seconds: cache build, compile warm-up
    params: list[torch.nn.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        self.params = [p for _, p in self.named]

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def ckpt_root(self) -> Path:
        return self.out / CHECKPOINT_DIR

    def say(self, *args: Any) -> None:
        """A log line (main process only, and only with progress output on)."""
        if self.config.progress:
            self.accelerator.print(*args)

    def write_state(self, status: str, step: int, extra: dict[str, Any] | None = None) -> None:
        """``train_state.json``: running / interrupted / failed / complete, the step and the newest checkpoint."""
        if self.is_main:
            write_json(self.out / STATE_FILE, {"status": status, "step": step, "total_steps": self.total_steps,
                                               "kind": self.task.kind, **(extra or {})})

    def checkpoint(self, step: int) -> Path | None:
        """Weights, optimizer, scheduler, scaler and every process's RNG state (all processes take part)."""
        from accelerate.utils import gather_object

        accelerator = self.accelerator
        rng = gather_object([capture_rng()]) if accelerator.num_processes > 1 else [capture_rng()]
        path = None
        if self.is_main:
            path = save_checkpoint(
                self.ckpt_root, step, parameter_state(self.named),
                {"fingerprint": self.fingerprint, "total_steps": self.total_steps,
                 "epoch": step // self.schedule.steps_per_epoch},
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                rng=rng, keep=self.config.keep_checkpoints)
            self.write_state("running", step, {"checkpoint": str(path)})
        accelerator.wait_for_everyone()
        self.last_saved = step
        return path

    def validate(self, step: int) -> None:
        """A PNG grid: reference row over generated row."""
        if not self.is_main:
            return
        self.task.train_mode(False)
        reference, generated = self.task.validation_images(self.config.num_val_images)
        self.task.train_mode(True)
        save_grid([reference, generated], self.out / VALIDATION_DIR / f"step-{step:08d}.png")

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl`` (and the tracker, if any)."""
        if not self.is_main:
            return
        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as handle:  # append-only log; truncated on resume
            handle.write(json.dumps(record) + "\n")
        if self.config.tracker:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


@dataclass
class MetricsWindow:
    """Losses and samples since the last metrics line (its loss is their mean, its speed samples/s)."""

    losses: list[float] = field(default_factory=list)
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)
    extra: dict[str, Any] = field(default_factory=dict)  # one-off figures for the next line (compile warm-up)

    def write(self, run: TrainingRun, bar: Any, progress_task: Any) -> None:
        """Append the metrics line for ``run.step``, show it on the bar and start a new window."""
        speed = self.samples / max(1e-9, time.perf_counter() - self.start)
        record = {"step": run.step, "epoch": round(run.step / run.schedule.steps_per_epoch, 4),
                  "loss": sum(self.losses) / len(self.losses), "lr": run.scheduler.get_last_lr()[0],
                  "samples_per_s": round(speed, 3), "time": time.time(), **self.extra}
        if run.device.type == "cuda":
            record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(run.device) / 2**30, 3)
        run.log(record)
        bar.update(progress_task, loss=f"{record['loss']:.4f}", speed=f"{speed:.1f}")
        self.losses, self.samples, self.start, self.extra = [], 0, time.perf_counter(), {}


    def exclude_warm_up(self, run: TrainingRun) -> None:
        """After the first step of a compiled run: that step compiled the networks (minutes), so its time is
        reported on its own (log line, ``train_state.json``, this window's metrics line), not in samples/s."""
        seconds = round(time.perf_counter() - self.start, 3)
        run.timings["compile_warmup_s"] = self.extra["compile_warmup_s"] = seconds
        self.samples, self.start = 0, time.perf_counter()
        run.say(f"compile warm-up (first step): {seconds:.1f} s, not counted in samples/s")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a crash
    write_text(path, "".join(k + "\n" for k in kept))


def save_grid(rows: Sequence[torch.Tensor], path: Path) -> None:
    """Rows of [n,3,R,R] images in [0,1] -> one PNG (atomic)."""
    n = max(len(r) for r in rows)
    size = rows[0].shape[-1]
    grid = Image.new("RGB", (n * (size + 2), len(rows) * (size + 2)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = to_pil(img)
            if tile.size[0] != size:
                tile = tile.resize((size, size), Image.BILINEAR)
            grid.paste(tile, (c * (size + 2), r * (size + 2)))
    scale = max(1, 96 // size)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
