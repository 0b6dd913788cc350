"""Shared input checks: bad input fails with one line (a :class:`~featinv.errors.FeatinvError`) before
anything is written, and every command and API call checks a value the same way."""

from __future__ import annotations

import math
from typing import Any

from featinv.errors import FeatinvError

__all__ = ["check_count", "check_device", "check_finite", "check_guidance", "check_number", "check_seeds",
           "check_steps"]

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
        if not 0 <= int(value) < 2**64:
            raise FeatinvError(f"seed {value} is out of range; seeds are integers from 0 to 2**64 - 1")
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


def check_steps(steps: Any, limit: int = 1000, name: str = "steps") -> int:
    """A denoising step count from 1 to ``limit`` (the base's training timesteps: a scheduler cannot take more)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
        raise FeatinvError(f"{name} must be an integer from 1 to {limit} (the base's training timesteps), "
                           f"got {steps!r}; e.g. 50 (the paper) or 25")
    return steps


def check_count(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    """An integer count within bounds (batch sizes, epochs as whole numbers, image sizes)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        if high is None and low == 1:
            raise FeatinvError(f"{name} must be a positive integer, got {value!r}")
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise FeatinvError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def check_number(value: Any, name: str, low: float = 0.0, high: float | None = None) -> float:
    """A finite number within bounds (``inf`` and NaN are refused: no loop may run for ever)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FeatinvError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number) or number < low or (high is not None and number > high):
        bound = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
        raise FeatinvError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; otherwise one line listing them."""
    if value not in choices:
        raise FeatinvError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_image_size(value: Any, name: str = "input size") -> tuple[int, int]:
    """An integer of at least 8 or an (H, W) pair of them -> (H, W)."""
    size = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size):
        raise FeatinvError(f"{name} must be an integer of at least 8 or a pair (H, W), got {value!r}")
    return (int(size[0]), int(size[1]))


def check_rgb(value: Any, name: str, positive: bool = False) -> tuple[float, float, float]:
    """One number per RGB channel from 1 or 3 numbers (or "0.5,0.5,0.5" as typed on a command line)."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, (int, float)) else value
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or (positive and min(values) <= 0):
        kind = "positive numbers" if positive else "numbers"
        raise FeatinvError(f"{name} must be 1 or 3 {kind} (one per RGB channel), got {value!r}; e.g. 0.5,0.5,0.5")
    return values  # type: ignore[return-value]


def check_normalisation(mean: Any = None, std: Any = None) -> dict[str, tuple[float, float, float]]:
    """The given ``mean``/``std`` (None: not given) checked, as Preprocessing fields."""
    out = {}
    if mean is not None:
        out["mean"] = check_rgb(mean, "mean")
    if std is not None:
        out["std"] = check_rgb(std, "std", positive=True)
    return out
