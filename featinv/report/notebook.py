"""Image grids as PNG bytes and HTML, so results show themselves in Jupyter and in the explorer's export.

Results of the Python API (``Reconstruction``, the analyses' items and results, the explorer's results)
mix in :class:`GridDisplay` and only say which captioned panels they consist of. The grid is drawn with
Pillow rather than matplotlib: exact pixels, no figure state, and fast enough to run on every display.
Small images (a 32 px reconstruction) are enlarged with nearest-neighbour so their pixels stay visible.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["GridDisplay", "Panel", "grid_html", "grid_png", "png_bytes"]

#: one captioned panel: (caption, ``[H, W, 3]`` uint8 image)
Panel = tuple[str, np.ndarray]

MIN_CELL = 128
_PAD = 4
_CAPTION_HEIGHT = 14


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """An image as PNG bytes (lossless, so the pixels shown are the pixels computed)."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _cell_size(rows: Sequence[Sequence[Panel]]) -> int:
    largest = max((max(p[1].shape[:2]) for row in rows for p in row), default=1)
    if largest >= MIN_CELL:
        return int(largest)
    return int(largest) * -(-MIN_CELL // int(largest))  # a whole multiple: nearest-neighbour stays crisp


def _fit_caption(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def grid_png(rows: Sequence[Sequence[Panel]]) -> bytes:
    """Rows of captioned panels as one PNG; each panel is scaled to a common square cell, caption below."""
    rows = [list(row) for row in rows if row]
    if not rows:
        return png_bytes(np.zeros((1, 1, 3), dtype=np.uint8))
    cell = _cell_size(rows)
    columns = max(len(row) for row in rows)
    step_x, step_y = cell + _PAD, cell + _CAPTION_HEIGHT + _PAD
    canvas = Image.new("RGB", (columns * step_x + _PAD, len(rows) * step_y + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, row in enumerate(rows):
        for c, (caption, image) in enumerate(row):
            picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
            scale = cell / max(picture.size)
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            picture = picture.resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)
            x, y = _PAD + c * step_x, _PAD + r * step_y
            canvas.paste(picture, (x, y))
            draw.text((x, y + cell + 1), _fit_caption(draw, caption, cell, font), fill="black", font=font)
    return png_bytes(canvas)


def grid_html(rows: Sequence[Sequence[Panel]], title: str = "", notes: Sequence[str] = ()) -> str:
    """Rows of captioned panels as HTML with the images embedded (one self-contained fragment)."""
    parts = ["<div class='featinv-grid'>"]
    if title:
        parts.append(f"<div><b>{html.escape(title)}</b></div>")
    for row in rows:
        parts.append("<div style='display:flex;flex-wrap:wrap;gap:6px;margin:4px 0'>")
        for caption, image in row:
            data = base64.b64encode(png_bytes(image)).decode("ascii")
            parts.append("<figure style='margin:0;text-align:center'>"
                         f"<img src='data:image/png;base64,{data}' alt='{html.escape(caption)}' "
                         "style='width:128px;image-rendering:pixelated'>"
                         f"<figcaption style='font-size:80%'>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts += [f"<div style='font-size:85%'>{html.escape(note)}</div>" for note in notes]
    parts.append("</div>")
    return "".join(parts)


class GridDisplay:
    """Mixin: Jupyter shows the object as a grid of its :meth:`display_rows` (``_repr_png_``/``_repr_html_``)."""

    def display_rows(self) -> list[list[Panel]]:
        """Rows of ``(caption, uint8 image)`` panels; a subclass says what it consists of."""
        raise NotImplementedError

    def display_title(self) -> str:
        """A line above the grid in HTML."""
        return ""

    def display_notes(self) -> list[str]:
        """Lines below the grid in HTML (numbers, warnings)."""
        return []

    def _repr_png_(self) -> bytes:
        return grid_png(self.display_rows())

    def _repr_html_(self) -> str:
        return grid_html(self.display_rows(), self.display_title(), self.display_notes())
