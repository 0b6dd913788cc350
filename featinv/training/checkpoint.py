"""Training checkpoints that survive crashes: written whole or not at all, newest K kept.

A checkpoint is one folder ``<root>/step-00000100/`` holding the trainable weights (safetensors with a
checksum), the optimizer / lr-scheduler / grad-scaler state, the RNG state of every process and a small
``state.json`` (step, epoch, settings that must not change on resume). The folder is assembled in a
hidden temporary folder and renamed into place, so a crash mid-write never leaves a half checkpoint that
``--resume`` would pick up.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv.errors import FeatinvError
from featinv.io import atomic_dir, load_safetensors, read_json, save_safetensors, write_json

_STEP_DIR = re.compile(r"^step-(\d+)$")
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.json"
TRAINER_FILE = "trainer_state.pt"


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly where it stopped."""

    path: Path
    step: int
    params: dict[str, torch.Tensor]
    state: dict[str, Any]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: list[dict[str, Any]] = field(default_factory=list)


def capture_rng() -> dict[str, Any]:
    """The state of every random generator a training step may touch (python, numpy, torch, cuda)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_as_tensors(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state_as_tensors(state: tuple[Any, ...]) -> tuple[Any, ...]:
    """numpy's generator state with its key array as a tensor, so the state loads with ``weights_only``."""
    name, keys, position, has_gauss, cached = state
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64)), int(position),
            int(has_gauss), float(cached))


def _numpy_state_from_tensors(state: Any) -> tuple[Any, ...]:
    name, keys, position, has_gauss, cached = state
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy().astype(np.uint32)
    return (name, keys, position, has_gauss, cached)


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the generators captured by :func:`capture_rng` (missing entries are left alone)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(_numpy_state_from_tensors(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir_name(step: int) -> str:
    """Checkpoint folder name for ``step``, zero-padded so names sort in step order."""
    return f"step-{step:08d}"


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temporary folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    params: dict[str, torch.Tensor],
    state: dict[str, Any],
    optimizer: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    scaler: dict[str, Any] | None = None,
    rng: list[dict[str, Any]] | None = None,
    keep: int | None = None,
) -> Path:
    """Write one checkpoint atomically, then delete all but the newest ``keep`` (None: keep all)."""
    root = Path(root)
    target = root / step_dir_name(step)
    with atomic_dir(target, kind="checkpoint") as tmp:
        save_safetensors(params, tmp / WEIGHTS_FILE, metadata={"step": str(step)})
        trainer_state = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "rng": rng or []}
        try:
            torch.save(trainer_state, tmp / TRAINER_FILE)  # straight to disk: no second in-memory copy (GBs for SD)
        except RuntimeError as exc:  # torch reports a failed write (a full disk) as a RuntimeError without errno
            # ("... write ..." or, on a real full file system, "unexpected pos N vs M" from its zip writer)
            full = shutil.disk_usage(tmp).free < 2**20
            if not full and "write" not in str(exc):
                raise
            code = errno.ENOSPC if full else errno.EIO
            raise OSError(code, f"{os.strerror(code)} (writing {TRAINER_FILE})", str(target)) from None
        write_json(tmp / STATE_FILE, {**state, "step": step})
    if keep is not None:
        rotate_checkpoints(root, keep)
    return target


def rotate_checkpoints(root: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete the oldest checkpoints so that at most ``keep`` (>= 1) remain; returns the deleted ones."""
    keep = max(1, int(keep))
    checkpoints = list_checkpoints(root)
    doomed = checkpoints[:-keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    # leftovers of a writer killed mid-checkpoint (hidden temp folders) are garbage too
    for child in Path(root).glob(".step-*.tmp"):
        shutil.rmtree(child, ignore_errors=True)
    return doomed


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder (or the newest one under a folder of checkpoints)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        newest = latest_checkpoint(path)
        if newest is None:
            raise FeatinvError(f"no checkpoint found in {path}; pass a run folder written by `featinv train`")
        path = newest
    state = read_json(path / STATE_FILE, what="checkpoint state")
    try:
        params = load_safetensors(path / WEIGHTS_FILE, device=str(device))
    except FeatinvError as exc:  # say which folder to drop: the older checkpoints are still good
        raise FeatinvError(f"checkpoint {path} is unusable ({str(exc).split(';')[0]}); delete that folder to resume "
                           "from an older checkpoint") from None
    trainer_file = path / TRAINER_FILE
    if not trainer_file.is_file():
        raise FeatinvError(f"checkpoint {path} lacks {TRAINER_FILE}; resume from an older checkpoint or restart")
    try:
        # data only: a run folder may come from anyone, and a full unpickle would run code hidden in it
        trainer_state = torch.load(trainer_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FeatinvError(f"checkpoint {path} holds {TRAINER_FILE} with objects other than tensors and numbers "
                           f"({str(exc).splitlines()[0][:120]}); refusing to load it — delete that checkpoint folder "
                           "to resume from an older one, or restart") from None
    except Exception as exc:  # torch raises several types for truncated pickles
        raise FeatinvError(f"checkpoint {path} is corrupt ({exc.__class__.__name__}); delete it to resume from an older one") from None
    return Checkpoint(
        path=path,
        step=int(state["step"]),
        params=params,
        state=state,
        optimizer=trainer_state.get("optimizer"),
        scheduler=trainer_state.get("scheduler"),
        scaler=trainer_state.get("scaler"),
        rng=list(trainer_state.get("rng") or []),
    )


def parameter_state(named: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Named parameters on the CPU for a checkpoint (no copy when they already live there: saving is synchronous)."""
    return {name: param.detach().cpu() for name, param in named}


def load_parameter_state(named: list[tuple[str, torch.nn.Parameter]], tensors: dict[str, torch.Tensor]) -> None:
    """Copy checkpointed tensors into the live parameters, refusing any mismatch clearly."""
    missing = [name for name, _ in named if name not in tensors]
    if missing or len(tensors) != len(named):
        raise FeatinvError(
            f"checkpoint does not match the model ({len(missing)} parameters missing, {len(tensors)} stored vs "
            f"{len(named)} expected); resume with the same settings or start a new run folder"
        )
    with torch.no_grad():
        for name, param in named:
            value = tensors[name]
            if value.shape != param.shape:
                raise FeatinvError(
                    f"checkpoint parameter {name} has shape {tuple(value.shape)}, model has {tuple(param.shape)}; "
                    "resume with the same settings or start a new run folder"
                )
            param.copy_(value.to(device=param.device, dtype=param.dtype))
