"""The two readings of the paper's cosine-sim, both reported and each labelled.

The paper's Table 1 reports "the median of the cosine similarity of all superpixels". featinv's
``cosine_sim`` takes the median over the positions of each image and then the mean over images (with a
95% interval); ``cosine_sim_all_positions`` pools the positions of every image and takes one median, the
other defensible reading. Each evaluated row keeps its positions' cosines (``cosine_positions``: float16,
base64; within 0.0005 of the float64 values) so the pooled median survives resuming.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

PER_IMAGE_NOTE = "median over feature-map positions per image (unpooled map), mean over images"
ALL_POSITIONS_NOTE = "median over every feature-map position of every image (the paper's 'median of all superpixels')"
#: the Markdown note under every table that shows the cosine columns
TABLE_NOTE = (f"cosine-sim: {PER_IMAGE_NOTE}; cosine-sim (all positions): {ALL_POSITIONS_NOTE}.")


def encode_positions(cosines: torch.Tensor) -> str:
    """One image's per-position cosines as compact text (float16, base64) for the resumable index."""
    return base64.b64encode(cosines.detach().cpu().to(torch.float16).numpy().tobytes()).decode("ascii")


def decode_positions(text: str) -> np.ndarray:
    """The inverse of :func:`encode_positions` (float64)."""
    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float64)


def pooled_median(per_image: Iterable[np.ndarray | torch.Tensor]) -> float | None:
    """The median of every position of every image (an even count takes the mean of the two middle values)."""
    parts = [np.asarray(p, dtype=np.float64).ravel() for p in per_image]
    values = np.concatenate(parts) if parts else np.empty(0)
    return float(np.median(values)) if values.size else None


def all_positions_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``cosine_sim_all_positions`` for a summary: None unless every row kept its positions."""
    if not rows or not all(r.get("cosine_positions") for r in rows):
        return None  # an index written before positions were kept: a partial pool would mislead
    kept = [decode_positions(r["cosine_positions"]) for r in rows]
    return {"median": pooled_median(kept), "n_positions": int(sum(k.size for k in kept)),
            "n_images": len(kept), "note": ALL_POSITIONS_NOTE}
