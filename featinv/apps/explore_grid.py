"""Choosing Compose's region by clicking feature-grid cells on a picture of image A.

The page shows A with the backbone's feature grid drawn over it; each click toggles one cell, and the
region is the smallest rectangle of cells holding every chosen cell (composition pastes rectangles, see
:class:`featinv.analyses.compose.Region`). Plain functions without Gradio, so the mapping from a click to a
cell and from cells to the ``x0,y0,x1,y1`` text the Compose panel takes is tested without a browser.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["GRID_PICTURE_SIZE", "cell_at", "cells_region", "grid_picture", "toggle_cell"]

#: the grid picture's side in pixels (large enough to hit one cell of a 16x16 grid with a mouse)
GRID_PICTURE_SIZE = 320
Cell = tuple[int, int]


def cell_at(x: float, y: float, size: tuple[int, int], grid: tuple[int, int]) -> Cell:
    """The cell ``(column, row)`` under pixel ``(x, y)`` of a picture of ``size`` (width, height); ``grid`` is
    the feature grid's (rows, columns), as ``BackboneInfo.grid``. Clicks on the last pixel stay inside."""
    (width, height), (rows, columns) = size, grid
    column = min(max(int(x * columns // width), 0), columns - 1)
    row = min(max(int(y * rows // height), 0), rows - 1)
    return column, row


def toggle_cell(cells: list[Cell] | None, cell: Cell) -> list[Cell]:
    """``cells`` with ``cell`` added, or removed when it was chosen already (a new list, sorted)."""
    chosen = {tuple(c) for c in cells or []}
    chosen ^= {tuple(cell)}
    return sorted(chosen)  # type: ignore[arg-type]


def cells_region(cells: list[Cell] | None) -> str:
    """The Compose panel's ``x0,y0,x1,y1`` (end exclusive) covering every chosen cell; "" for none."""
    if not cells:
        return ""
    columns, rows = [c for c, _ in cells], [r for _, r in cells]
    return f"{min(columns)},{min(rows)},{max(columns) + 1},{max(rows) + 1}"


def grid_picture(image: np.ndarray, grid: tuple[int, int], cells: list[Cell] | None = None) -> np.ndarray:
    """``image`` (``[H, W, 3]`` uint8) with the feature grid's lines, the region covering ``cells`` shaded
    yellow and the clicked cells marked, so the page shows what a Compose request will paste."""
    picture = Image.fromarray(image).convert("RGB")
    width, height = picture.size
    rows, columns = grid
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)

    def box(column: int, row: int, end_column: int, end_row: int) -> tuple[int, int, int, int]:
        return (column * width // columns, row * height // rows, end_column * width // columns - 1,
                end_row * height // rows - 1)

    if cells:
        x0, y0, x1, y1 = (int(v) for v in cells_region(cells).split(","))
        draw.rectangle(box(x0, y0, x1, y1), fill=(255, 220, 0, 70), outline=(255, 220, 0, 255), width=2)
        for column, row in cells:
            draw.rectangle(box(column, row, column + 1, row + 1), fill=(255, 220, 0, 90))
    for column in range(1, columns):
        draw.line([(column * width // columns, 0), (column * width // columns, height)], fill=(255, 255, 255, 140))
    for row in range(1, rows):
        draw.line([(0, row * height // rows), (width, row * height // rows)], fill=(255, 255, 255, 140))
    return np.asarray(Image.alpha_composite(picture.convert("RGBA"), overlay).convert("RGB"))
