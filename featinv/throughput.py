"""Estimated time from FLOPs and the recorded benchmarks (the dry runs' "estimated time" row).

``resources/throughput.json`` holds achieved FLOP/s per device kind and workload (``train``: a training step;
``sample``: guided denoising), each re-derived from a measured result in ``benchmarks/results`` by
``benchmarks/bench_throughput.py`` (which also measures a new machine with ``--measure``). An estimate is
FLOPs / the recorded FLOP/s of the current device; a device without a record gets no number, only the
sentence saying so — a guess from another machine would be worse than none. The figures are achieved rates
of the benchmarked models at their batch sizes; a much larger or smaller model, batch or precision runs at
another rate, so the estimate is an order of magnitude, and the row names the record it used.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["Estimate", "device_kind", "estimate_time", "format_duration", "format_flops", "records"]


@cache
def records() -> tuple[dict[str, Any], ...]:
    """The packaged throughput records (see the module docstring)."""
    text = resources.files("featinv").joinpath("resources/throughput.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["records"])


def device_kind(device: str | None) -> str:
    """What the records are keyed by: ``cpu``, or the CUDA card's name (``NVIDIA H200``) for a CUDA device."""
    import torch

    name = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = torch.device(name).type
    if kind != "cuda":
        return kind
    if not torch.cuda.is_available():
        return f"{name} (no CUDA device visible)"
    return torch.cuda.get_device_name(torch.device(name).index or 0)


@dataclass(frozen=True)
class Estimate:
    """Seconds (None without a matching record) and the row's text, which names the record used."""

    seconds: float | None
    text: str


def _closest(candidates: list[dict[str, Any]], precision: str, batch: int) -> list[dict[str, Any]]:
    """The records nearest to the run: the same precision when any has it, then the nearest batch size."""
    same = [r for r in candidates if r["precision"] == precision] or candidates
    distance = {id(r): abs(math.log(max(1, int(r["batch"]))) - math.log(max(1, batch))) for r in same}
    best = min(distance.values())
    return [r for r in same if distance[id(r)] == best]


def estimate_time(flops: float | None, device: str | None, workload: str, precision: str = "fp32",
                  batch: int = 1) -> Estimate:
    """FLOPs / the recorded FLOP/s of ``device``'s kind for ``workload`` (``train`` or ``sample``)."""
    kind = device_kind(device)
    if flops is None:
        return Estimate(None, "no estimate: the FLOPs could not be counted")
    matching = [r for r in records() if r["device"].lower() == kind.lower() and r["workload"] == workload]
    if not matching:
        return Estimate(None, f"no recorded benchmark for {kind}")
    chosen = _closest(matching, precision, batch)
    rate = statistics.median(float(r["flop_per_s"]) for r in chosen)
    seconds = float(flops) / rate
    first = chosen[0]
    return Estimate(seconds, f"≈ {format_duration(seconds)} at {format_flops(rate)}/s, recorded for {kind} "
                             f"({workload} {first['precision']}, batch {first['batch']}: {first['source']})")


def format_flops(flops: float) -> str:
    """``1.23 TFLOP``: the largest unit that keeps the number at least 1."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"


def format_duration(seconds: float) -> str:
    """``2 h 05 min``, ``3 min 20 s`` or ``4.2 s``."""
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours / 24:.1f} days"
