"""Figure helpers shared by the analyses: image panels, crops as the backbone sees them, outlines.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so analyses can draw them in
threads and tests.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from featinv.data import center_crop_box, to_uint8

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

__all__ = ["YELLOW", "display_image", "draw_box_outline", "format_cosine", "heat_overlay", "image_panel", "masked_view",
           "new_figure", "to_uint8"]

YELLOW = (255, 255, 0)


def display_image(image: Image.Image, size: int, aspect: tuple[int, int] = (1, 1)) -> np.ndarray:
    """The central crop the backbone sees (its input aspect ratio), resized to ``size`` x ``size`` uint8."""
    from PIL import Image as PILImage

    th, tw = aspect
    crop = image.convert("RGB").crop(center_crop_box(*image.size, (Fraction(tw, th),) * 2))
    return np.asarray(crop.resize((size, size), PILImage.BILINEAR), dtype=np.uint8).copy()


def draw_box_outline(array: np.ndarray, box: tuple[int, int, int, int], color: tuple[int, int, int] = YELLOW,
                     width: int = 2) -> np.ndarray:
    """A copy of ``array`` (``[H, W, 3]`` uint8) with the outline of pixel box ``(x0, y0, x1, y1)`` drawn inside it.

    ``x1``/``y1`` are exclusive; an empty box draws nothing. The outline is burnt into the pixels (not a
    matplotlib patch), so it sits exactly on the region in both the array and the saved figure.
    """
    out = array.copy()
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return out
    width = max(1, min(width, (x1 - x0 + 1) // 2, (y1 - y0 + 1) // 2))
    color_arr = np.asarray(color, dtype=out.dtype)
    out[y0:y0 + width, x0:x1] = color_arr
    out[y1 - width:y1, x0:x1] = color_arr
    out[y0:y1, x0:x0 + width] = color_arr
    out[y0:y1, x1 - width:x1] = color_arr
    return out


def new_figure(rows: int, cols: int, panel: float = 2.2) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows`` x ``cols`` image panels (no pyplot state, safe in threads and tests)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel * cols, panel * rows + 0.3), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def image_panel(ax: Axes, image: np.ndarray, title: str = "", caption: str | None = None, **imshow: Any) -> None:
    """One image panel with a title above and an optional number below (the paper's cosine captions)."""
    ax.imshow(image, **imshow)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    if caption is not None:
        ax.text(0.5, -0.04, caption, transform=ax.transAxes, ha="center", va="top", fontsize=8)


def format_cosine(value: float) -> str:
    """The caption under a reconstruction: its feature cosine with the map it came from."""
    return f"cos {value:.2f}"



def masked_view(image: np.ndarray, mask: np.ndarray, dim: float = 0.25) -> np.ndarray:
    """``image`` (uint8 ``[H, W, 3]``) with the pixels outside ``mask`` dimmed to ``dim``: FeatInv-Viz's panel."""
    return (image.astype(np.float32) * np.where(mask, 1.0, dim)[..., None]).astype(np.uint8)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``heat`` (``[H, W]`` in [0, 1]) in the jet colour map blended over ``image``, as one uint8 array.

    The same picture as ``imshow(heat, cmap="jet", alpha=alpha)`` over the image, for places that show
    arrays rather than matplotlib axes (notebooks, the explorer).
    """
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0))[..., :3] * 255.0
    return (image.astype(np.float32) * (1.0 - alpha) + colours * alpha).round().clip(0, 255).astype(np.uint8)
