"""Concept activation maps: where on an image each concept is, as the coarse ``|part|^2`` map upsampled.

This is the usual way to show concepts (and the baseline FeatInv-Viz improves on): decompose the image's
feature map, take each part's squared norm per position and upsample it bilinearly to the input.
:func:`show_concepts` (what `featinv concepts show` runs) draws them over the image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from featinv.concepts.base import Decomposer, load_decomposer
from featinv.errors import FeatinvError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

    from featinv.features.backbone import Backbone

__all__ = ["backbone_for", "concept_activation_maps", "concept_figure", "show_concepts"]


def backbone_for(decomposer: Decomposer, device: str = "cpu") -> Backbone:
    """Rebuild the backbone (spec, layer, weights, input size) the concepts were fitted on."""
    from featinv.features.backbone import backbone as build_backbone

    meta = decomposer.meta
    if not meta.get("backbone"):
        raise FeatinvError("these concepts were fitted on raw vectors, so their backbone is unknown; pass backbone=")
    model = build_backbone(meta["backbone"], layer=meta.get("layer"), weights=meta.get("weights", "pretrained"),
                           input_size=meta.get("input_size"), device=device)
    decomposer.check_backbone(model.spec, model.layer, model.info.channels)
    return model


def concept_activation_maps(
    decomposer: Decomposer, backbone: Backbone, image: Image.Image | str | os.PathLike[str]
) -> tuple[Tensor, Tensor]:
    """``(image01 [3, H, W], maps [K+1, H, W])``: |part|^2 per position, bilinearly upsampled to the input.

    This is the coarse concept activation map (the last map is the residual) that FeatInv-Viz improves on.
    """
    import torch.nn.functional as F

    from featinv.data import open_image

    decomposer.check_backbone(backbone.spec, backbone.layer, backbone.info.channels)
    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    x = backbone.preprocess(image)
    with torch.no_grad():
        decomposition = decomposer.decompose(backbone.features(x))
    maps = decomposition.concept_maps(include_residual=True)[:, 0].cpu()  # [K+1, h, w]
    size = tuple(x.shape[-2:])
    upsampled = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0].clamp_min(0.0)
    mean = torch.tensor(backbone.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(backbone.preprocessing.std).view(3, 1, 1)
    image01 = (x[0].cpu() * std + mean).clamp(0.0, 1.0)
    return image01, upsampled


def concept_figure(image01: Tensor, maps: Tensor, title: str = "") -> Figure:
    """Image plus one panel per concept (and the residual) with its activation map overlaid.

    All panels share one colour scale, so brightness compares concepts; titles give each part's share of
    the total ``|part|^2`` over the image.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = maps.shape[0] - 1
    shares = maps.sum((1, 2)) / maps.sum().clamp_min(1e-30)
    vmax = float(maps.max().clamp_min(1e-30))
    panels = k + 2
    fig, axes = plt.subplots(1, panels, figsize=(2.2 * panels, 2.6), squeeze=False)
    picture = image01.permute(1, 2, 0).numpy()
    gray = picture.mean(2)
    axes[0, 0].imshow(picture)
    axes[0, 0].set_title("image", fontsize=9)
    for i in range(k + 1):
        ax = axes[0, i + 1]
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        ax.imshow(maps[i].numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=vmax)
        name = f"concept {i}" if i < k else "residual"
        ax.set_title(f"{name} ({100 * float(shares[i]):.0f}%)", fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def show_concepts(
    concepts: str | os.PathLike[str] | Decomposer,
    image: Image.Image | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backbone: Backbone | None = None,
    device: str = "cpu",
) -> Path:
    """Write a PNG of the concept activation maps (bilinear upsampling) of ``image`` for saved concepts."""
    from featinv.io import save_figure

    if Path(out).is_dir():
        raise FeatinvError(f"--out {out} is a folder; pass a file name such as {Path(out) / 'concepts.png'}")
    decomposer = concepts if isinstance(concepts, Decomposer) else load_decomposer(concepts)
    model = backbone if backbone is not None else backbone_for(decomposer, device=device)
    image01, maps = concept_activation_maps(decomposer, model, image)
    title = f"{decomposer.name} concepts, {model.spec} {model.layer}"
    return save_figure(concept_figure(image01, maps, title), out)
