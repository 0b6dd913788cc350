"""``featinv eval --dry-run``: what an evaluation would do, resolved without sampling and without writing anything.

The run is rebuilt from its configs with random weights (``FeatInv.from_pretrained(run, weights=False)``: no
ControlNet or backbone weights read, nothing downloaded), the originals are listed without decoding them, and
the FLOPs of one reconstruction are counted on the meta device (:mod:`featinv.diffusion.plan`). No output
folder, lock or index is created.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featinv.diffusion.plan import run_rows, sampling_rows, show
from featinv.evaluation.sources import DataArg, collect_sources

__all__ = ["evaluation_plan"]


def evaluation_plan(run: str | os.PathLike[str], data: DataArg, out: str | os.PathLike[str] | None = None,
                    per_class: int | None = 10, seeds: Sequence[int] = (0,), guidance_scale: float | None = None,
                    steps: int = 50, scheduler: str = "ddim", batch_size: int = 8, evaluate_with: Sequence[str] = (),
                    fid: str = "auto", limit: int | None = None, device: str = "cpu", feature_guidance: Any = 0.0,
                    resize_mode: str = "model", control_strength: float = 1.0, guess_mode: bool = False,
                    preset: str | None = None) -> list[tuple[str, str]]:
    """``(setting, value)`` rows of the evaluation :func:`~featinv.evaluation.evaluate.evaluate` would run with
    these arguments (``preset``: the preset already applied to them, shown for the record)."""
    from featinv.diffusion.model import FeatInv
    from featinv.evaluation.evaluate import _checked_sampling

    seeds = [int(s) for s in seeds] or [0]
    guidance_scale, steering, paper = _checked_sampling(guidance_scale, batch_size, feature_guidance, resize_mode,
                                                        control_strength, guess_mode)
    sources = collect_sources(data, per_class)
    model = FeatInv.from_pretrained(run, weights=False)
    model.base.make_scheduler(scheduler)  # an unknown sampler fails here, as it would before sampling
    guidance = float(guidance_scale if guidance_scale is not None else model.guidance_scale)
    per_label = Counter(source.label for source in sources)
    jobs = len(sources) * len(seeds)
    todo = jobs if limit is None else min(jobs, max(0, limit))
    rows = [("preset", show(preset)), *run_rows(model, run),
            ("data", str(Path(data).resolve()) if isinstance(data, (str, os.PathLike)) else "<in-memory images>"),
            ("originals", f"{len(sources):,} from {len(per_label):,} class(es), up to {show(per_class)} per class"
                          f" ({_selection(per_label)})"),
            ("seeds", show(seeds)), ("reconstructions", f"{jobs:,}" + (f" ({todo:,} now: --limit)" if todo != jobs else "")),
            ("steps", str(steps)), ("scheduler", scheduler),
            ("guidance", f"{guidance:g}" + (" (the run's default)" if guidance_scale is None else "")),
            ("feature guidance", steering.describe() if steering.active else "off"),
            ("resize mode", resize_mode),
            ("control", show({k: v for k, v in paper.items() if k != "resize_mode"} or "default")),
            ("batch size", str(batch_size)),
            ("evaluate with", show(list(evaluate_with))), ("FID space", fid), ("device", device),
            ("output folder", f"{out} (not created by a dry run)" if out is not None else "- (in memory)")]
    notes = tuple(note for active, note in (
        (bool(evaluate_with), "the --evaluate-with models' forwards"), (fid != "none", "the FID/KID feature space"),
        (steering.active, "feature guidance's gradient steps")) if active)
    return rows + sampling_rows(model, todo, steps, guidance, device, batch_size, scored=True, notes=notes)


def _selection(per_label: Counter[str], shown: int = 3) -> str:
    """``cat: 10, dog: 10, … 998 more``: the first classes' counts."""
    items = [f"{label}: {n}" for label, n in sorted(per_label.items())[:shown]]
    more = len(per_label) - shown
    return ", ".join(items) + (f", … {more:,} more" if more > 0 else "")
