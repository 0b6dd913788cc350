"""Figures and tables people look at: image grids with captions, metric tables as PNG and Markdown."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from featinv.io import save_figure


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    path: str | os.PathLike[str],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    captions: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
    cell_inches: float = 1.6,
) -> Path:
    """Save a grid of images (rows × columns) with optional labels and a caption under each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols, (cell_inches + 0.25) * n_rows),
                             squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(rows[r]):
                continue
            ax.imshow(rows[r][c])
            if captions is not None and c < len(captions[r]) and captions[r][c]:
                ax.set_xlabel(captions[r][c], fontsize=8)
            if r == 0 and col_labels is not None and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=9)
            if c == 0 and row_labels is not None and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def table_figure(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Save a table (list of dicts with the same keys) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(rows[0]) if rows else []
    cells = [[format_cell(row.get(col)) for col in columns] for row in rows]
    # long headers (e.g. "FID[timm:tf_efficientnet_lite0 pooled]") wrap instead of running into their neighbours
    labels = ["\n".join(textwrap.wrap(str(col), 18, break_long_words=True, break_on_hyphens=False) or [""])
              for col in columns]
    header_lines = max((label.count("\n") + 1 for label in labels), default=1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(columns)), 0.45 * (len(rows) + header_lines) + 0.5))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=labels, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.4)
    for col in range(len(columns)):  # header row: tall enough for its wrapped lines
        header = table[0, col]
        header.set_height(header.get_height() * header_lines)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def format_cell(value: Any) -> str:
    """One table cell as text: floats to three decimals, None as empty."""
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of ``rows``."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(col)) for col in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
