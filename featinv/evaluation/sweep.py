"""Quality against guidance scale (paper Figure 7): one evaluation per scale, plotted together."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featinv.errors import FeatinvError
from featinv.evaluation.evaluate import EvalResult, evaluate
from featinv.evaluation.sources import DataArg
from featinv.io import ensure_output_dir, locks_output, save_figure, write_json

__all__ = ["SweepResult", "sweep"]


@dataclass
class SweepResult:
    """FID (or its labelled substitute) and cosine distance per guidance scale (paper Figure 7)."""

    guidance: list[float]
    results: list[EvalResult]
    plot: Path | None = None
    numbers: dict[str, Any] = field(default_factory=dict)



@locks_output("out")
def sweep(
    run: Any,
    data: DataArg,
    guidance: Sequence[float] = (1.0, 1.75, 3.0, 5.0, 8.0),
    out: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> SweepResult:
    """Evaluate at each guidance scale (same originals and seeds) and plot FID and cosine distance
    against it (paper Figure 7); writes ``sweep.json`` and ``sweep.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not guidance:
        raise FeatinvError("no guidance scales given; pass e.g. --guidance 1,1.75,3,5,8")
    from featinv.validation import check_guidance

    guidance = [check_guidance(g, "every guidance scale") for g in guidance]
    out_dir = ensure_output_dir(out) if out is not None else None
    results = []
    for g in guidance:  # a run folder is reloaded per scale (cheap) so every metrics.json names its run
        sub = out_dir / f"guidance-{g:g}" if out_dir is not None else None
        results.append(evaluate(run, data, out=sub, guidance_scale=float(g), **kwargs))
    fid_label = next((r.fid_label for r in results if r.fid_label), None)
    numbers = {
        "model": results[0].summary.get("model"),
        "guidance": [float(g) for g in guidance],
        "fid_label": fid_label,
        "fid": [r.fid for r in results],
        "kid_label": next((r.kid_label for r in results if r.kid_label), None),
        "kid": [r.kid for r in results],
        "cosine_distance": [None if r.cos_mean is None else 1.0 - r.cos_mean for r in results],
        "top5": [r.top5 for r in results],
        "top1": [r.top1 for r in results],
        "pixel_mse": [(r.summary.get("pixel_checks") or {}).get("pixel_mse") for r in results],
        "ssim": [(r.summary.get("pixel_checks") or {}).get("ssim") for r in results],
    }
    plot = None
    if out_dir is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = numbers["guidance"]
        if fid_label is not None:
            ax.plot(xs, [math.nan if v is None else v for v in numbers["fid"]], "o-", color="tab:blue", label=fid_label)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(fid_label or "FID (not computed)")
        ax2 = ax.twinx()
        ax2.plot(xs, [math.nan if v is None else v for v in numbers["cosine_distance"]], "s--", color="tab:red",
                 label="cosine distance")
        ax2.set_ylabel("cosine distance (1 - median cosine)")
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="best")
        ax.set_title(f"{numbers['model']}: quality vs guidance")
        plot = save_figure(fig, out_dir / "sweep.png")
        write_json(out_dir / "sweep.json", numbers)
    return SweepResult(guidance=[float(g) for g in guidance], results=results, plot=plot, numbers=numbers)

