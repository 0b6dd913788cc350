"""Shared input checks and the "no partial output" guard used at the CLI's error boundary.

Bad input must fail with one line (a :class:`~featinv.errors.FeatinvError`) *before* anything is written.
Most commands validate first and create their output folder afterwards; :func:`no_partial_output` is the
safety net for the rest: an output folder that did not exist before a failed command, and that still holds
no file, is removed again, so a typo never leaves an empty ``--out`` folder behind. Folders holding files
are never touched (a failed evaluation keeps the images it finished, so a rerun resumes).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from featinv.errors import FeatinvError

__all__ = ["check_device", "check_finite", "check_guidance", "check_seeds", "no_partial_output", "output_paths"]

#: command-line options whose value is a path the command writes to
OUTPUT_OPTIONS = ("--out", "-o")


def output_paths(args: Sequence[str]) -> list[Path]:
    """The paths given to ``--out``/``-o`` in a command line (``--out X`` and ``--out=X`` forms)."""
    paths: list[Path] = []
    for i, arg in enumerate(args):
        if arg in OUTPUT_OPTIONS and i + 1 < len(args):
            paths.append(Path(args[i + 1]))
        elif arg.startswith("--out="):
            paths.append(Path(arg.split("=", 1)[1]))
    return paths


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, outermost first (what a failed command may create)."""
    missing: list[Path] = []
    current = path.absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing[::-1]


def _holds_no_file(path: Path) -> bool:
    """Whether ``path`` is a folder tree with only (hidden temp files or) empty folders in it."""
    if not path.is_dir() or path.is_symlink():
        return False
    for _root, _dirs, files in os.walk(path):
        if any(not (name.startswith(".") and ".tmp" in name) for name in files):
            return False
    return True


@contextlib.contextmanager
def no_partial_output(paths: Sequence[str | os.PathLike[str]]) -> Iterator[None]:
    """On an error inside the block, remove output folders it created that hold no file.

    Interrupts (Ctrl-C) are left alone: a stopped command keeps what it wrote so a rerun resumes.
    """
    created = [p for path in paths for p in _missing_ancestors(Path(path))]
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        for path in created:  # outermost first: removing it removes the others with it
            if path.exists() and _holds_no_file(path):
                shutil.rmtree(path, ignore_errors=True)
        raise


def check_guidance(value: Any, name: str = "guidance scale") -> float:
    """A finite guidance scale >= 0 (1 = conditional branch only; below 1 leans toward unconditional)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FeatinvError(f"{name} {value!r} is not a number; pass e.g. --guidance 1.75") from None
    if not math.isfinite(number) or number < 0:
        raise FeatinvError(f"{name} must be a finite number >= 0, got {value!r}; pass e.g. --guidance 1.75 "
                           "(the paper: 1.75 unpooled, 8 pooled)")
    return number


def check_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` that exists on this machine (a missing GPU is one line, not a driver error)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise FeatinvError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise FeatinvError(f"device {device!r} needs a CUDA GPU, but none is available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise FeatinvError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                               "GPU(s); use cuda:0 .. cuda:N-1")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise FeatinvError(f"device {device!r} (Apple GPU) is not available here; use --device cpu")
    return parsed


def check_seeds(seeds: Any) -> list[int]:
    """One seed or a sequence of them as a list of ints; 1.5, "a" or True are refused, not silently cast."""
    import numbers

    if isinstance(seeds, (numbers.Number, str)) or getattr(seeds, "ndim", None) == 0:
        values = [seeds]
    else:
        try:
            values = list(seeds)
        except TypeError:
            raise FeatinvError(f"seeds must be an integer or a list of integers, got {type(seeds).__name__}") from None
    checked = []
    for value in values:
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
            value = value.item()
        integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise FeatinvError(f"seed {value!r} is not an integer; pass integer seeds, e.g. 0,1,2")
        checked.append(int(value))
    if not checked:
        raise FeatinvError("no seeds given; pass at least one integer seed, e.g. 0")
    return checked


def check_finite(tensor: Any, what: str, fix: str) -> None:
    """Refuse a tensor holding NaN or infinite values with one line naming ``what`` and the ``fix``."""
    import torch

    if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise FeatinvError(f"{what} contain {bad} NaN or infinite values; {fix}")
