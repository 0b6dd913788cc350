"""The rows every dry run shares: a model's shapes, and its FLOPs with the estimated time they imply.

``featinv train|eval|reconstruct --dry-run`` print ``(setting, value)`` rows; the shapes come from a model
built as the real command would build it but with random weights (``FeatInv.from_pretrained(run,
weights=False)`` or ``FeatInv.create(..., backbone_weights="none")``), the FLOPs from counting one sample
through its modules on the meta device (:mod:`featinv.diffusion.flops`), and the time from the recorded
benchmarks (:mod:`featinv.throughput`). Counting moves the model to the meta device, so it comes last.
"""

from __future__ import annotations

from typing import Any

from featinv.diffusion.flops import FlopCount, on_meta, sample_flops, total
from featinv.throughput import estimate_time, format_flops

Rows = list[tuple[str, str]]


def show(value: Any) -> str:
    """A setting as the table shows it (None: "-", lists comma-separated)."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def shape_rows(model: Any) -> Rows:
    """The backbone's input and feature map, and the base's resolution and latent grid."""
    info, base = model.backbone.info, model.base
    return [
        ("backbone input", f"{info.input_size[0]}×{info.input_size[1]} px"),
        ("feature map", f"{info.channels}×{info.grid[0]}×{info.grid[1]} ({info.layer})"
         + (", pooled to a vector" if model.pooled else "")),
        ("base resolution", f"{base.resolution} px (latent {base.latent_channels}×{base.latent_size}×{base.latent_size}, "
                            f"VAE factor {base.vae_scale_factor})"),
    ]


def run_rows(model: Any, run: Any) -> Rows:
    """What a run folder's config says: backbone spec, weights, layer, input size, pooled, base, guidance."""
    entry, base = model.config.get("backbone", {}), model.config.get("base", {})
    return [("run", str(run)), ("backbone", f"{entry.get('spec')} (weights {entry.get('weights', 'pretrained')})"),
            ("layer", show(entry.get("layer"))), ("pooled", show(model.pooled)),
            ("base", show(base.get("spec"))), *shape_rows(model)]


def flop_rows(counts: list[FlopCount], repeat: dict[str, int], units: int, unit: str, device: str | None,
              workload: str, precision: str, batch: int) -> Rows:
    """Per-unit FLOPs (each counted module, ``repeat`` times where given), the total for ``units`` units and
    the estimated time on ``device``; a module that could not be counted says so instead of a number."""
    parts = []
    for count in counts:
        times = next((n for key, n in repeat.items() if count.what.startswith(key)), 1)
        value = "not counted: " + count.note if count.flops is None else format_flops(count.flops)
        value += f" ({count.note})" if count.note and count.flops is not None else ""
        parts.append(f"{times} × {count.what} {value}" if times != 1 else f"{count.what} {value}")
    per_unit = total(counts, repeat)
    total_flops = None if per_unit is None else per_unit * units
    return [
        (f"FLOPs per {unit}", " + ".join(parts) + ("" if per_unit is None else f" = {format_flops(per_unit)}")),
        ("estimated FLOPs", "not counted (see the row above)" if total_flops is None
         else f"{format_flops(total_flops)} ({units:,} {unit}s)"),
        ("estimated time", estimate_time(total_flops, device, workload, precision, batch).text),
    ]


def sampling_rows(model: Any, images: int, steps: int, guidance_scale: float, device: str | None, batch: int,
                  precision: str = "fp32", scored: bool = False, notes: tuple[str, ...] = ()) -> Rows:
    """FLOPs and time of reconstructing ``images`` images: the backbone on each original, ``steps`` denoiser
    calls and a decode (``scored``: one more backbone forward scores each reconstruction, as ``evaluate`` does).
    The model is spent afterwards (moved to the meta device)."""
    counts = sample_flops(on_meta(model), guidance_scale)
    repeat = {"denoiser": steps, "backbone": 2 if scored else 1}
    rows = flop_rows(counts, repeat, images, "image", device, "sample", precision, batch)
    if notes:
        rows.append(("not in the estimate", "; ".join(notes)))
    return rows
