"""Fitting concepts on a backbone layer's features: images -> feature vectors -> a fitted, saved decomposer.

:func:`fit_concepts` is what `featinv concepts fit` runs: it builds the decomposer from the registry,
extracts one feature vector per position of every image (:func:`extract_vectors`, a batch at a time),
optionally reads the classifier row that makes concept relevances meaningful (:func:`classifier_row`),
fits, records where the data came from in ``decomposer.meta`` and saves the folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from featinv.concepts.base import Decomposer, feature_vectors
from featinv.errors import FeatinvError
from featinv.registry import create_decomposer

if TYPE_CHECKING:
    from featinv.features.backbone import Backbone

__all__ = ["classifier_row", "extract_vectors", "fit_concepts"]


def _image_items(data: Any, max_images: int | None) -> tuple[list[Any], str]:
    """``data`` -> (image paths and/or PIL images, a description for the metadata); nothing is opened yet.

    ``data`` is an image folder (recursive), one image file, or a list of paths / PIL images.
    """
    from PIL import Image as PILImage

    from featinv.data import as_pil, find_images, is_image_object

    if data is None:
        raise FeatinvError("no fitting data given; pass an image folder (e.g. one class), image files or PIL images")
    if isinstance(data, (str, os.PathLike)):
        items: list[Any] = list(find_images(data).paths)
        description = str(data)
    elif is_image_object(data):
        items, description = [as_pil(data)], "1 image"
    elif isinstance(data, Sequence) and len(data) > 0:
        items = []
        for item in data:
            if isinstance(item, (str, os.PathLike)):
                items.extend(find_images(item).paths)
            elif is_image_object(item):
                items.append(item if isinstance(item, PILImage.Image) else as_pil(item))
            else:
                raise FeatinvError(f"fitting data must be image paths, PIL images or numpy arrays, got "
                                   f"{type(item).__name__}")
        description = f"{len(items)} images"
    else:
        raise FeatinvError(f"fitting data must be a folder, image path(s) or PIL images, got {type(data).__name__}")
    if max_images is not None:
        if max_images < 1:
            raise FeatinvError(f"max_images must be at least 1, got {max_images}")
        items = items[:max_images]
    return items, description


def extract_vectors(backbone: Backbone, images: Sequence[Any], batch_size: int = 16,
                    progress: bool = True) -> tuple[Tensor, list[str]]:
    """Feature vectors ``[n*h*w, C]`` (CPU float32) of every position of every image, and the skipped files.

    ``images`` are PIL images or paths; paths are opened one batch at a time (a large folder never sits in
    memory at once) and unreadable files are skipped and returned by name.
    """
    from PIL import Image as PILImage

    from featinv.data import try_open_image
    from featinv.progress import progress as progress_bar

    if batch_size < 1:
        raise FeatinvError(f"batch_size must be at least 1, got {batch_size}")
    batches = [list(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    vectors, skipped = [], []
    with torch.no_grad():
        for batch in progress_bar(batches, description="extracting features", enabled=progress):
            opened = []
            for item in batch:
                img = item.convert("RGB") if isinstance(item, PILImage.Image) else try_open_image(item)
                if img is None:
                    skipped.append(str(item))
                else:
                    opened.append(img)
            if opened:
                vectors.append(feature_vectors(backbone.features(backbone.preprocess(opened))).float().cpu())
    if not vectors:
        raise FeatinvError(f"none of the {len(images)} images could be read; pass readable images")
    return torch.cat(vectors), skipped


def classifier_row(backbone: Backbone, target_class: int) -> Tensor:
    """The weight row for ``target_class`` of the backbone's final linear classifier, if it reads this layer.

    Relevances ``<f_c, w>`` only mean something when the classifier is linear in the layer's features
    (the layer is the one directly before global pooling and the last ``Linear``).
    """
    if not getattr(backbone, "has_classifier", True):
        raise FeatinvError(f"{backbone.spec} has no classifier head, so concept relevance for a class is not "
                           "available; fit without --target-class")
    linear = [m for m in backbone.model.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise FeatinvError(f"{backbone.spec} has no linear classifier; fit without target_class")
    head = linear[-1]
    if not 0 <= target_class < head.out_features:
        raise FeatinvError(f"target class {target_class} is outside 0..{head.out_features - 1}; pass a class index")
    if head.in_features != backbone.info.channels:
        raise FeatinvError(
            f"the classifier of {backbone.spec} reads {head.in_features} channels but layer {backbone.layer} has "
            f"{backbone.info.channels}; relevances need the last feature layer (omit --layer) or no --target-class"
        )
    return head.weight[target_class].detach().float().cpu()


def _portable_weights(weights: str) -> str:
    """A weight-file path made absolute, so the concepts folder works from any directory."""
    if weights not in ("pretrained", "none") and Path(weights).is_file():
        return str(Path(weights).resolve())
    return weights


def fit_concepts(
    backbone: str | Backbone,
    layer: str | None = None,
    data: Any = None,
    method: str | None = None,
    n_concepts: int = 5,
    out: str | os.PathLike[str] | None = None,
    *,
    weights: str = "pretrained",
    input_size: int | None = None,
    max_images: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    target_class: int | None = None,
    progress: bool = True,
    preset: str | None = None,
    **options: Any,
) -> Decomposer:
    """Fit concepts on a backbone layer's feature vectors over images (e.g. one class) and optionally save them.

    ``backbone`` is a spec (``timm:tf_efficientnet_lite0``) or a built :class:`~featinv.features.backbone.Backbone`;
    ``data`` an image folder, image file(s) or PIL images; ``options`` go to the decomposer (e.g.
    ``clustering="kmeans"`` for MCD, ``k=4`` for the SAE). ``target_class`` stores that class's classifier
    row for relevances (only when the layer feeds the linear classifier). The saved folder records the
    backbone spec, layer, weights and channels so later commands can check they use the same features.
    ``method``: the decomposer; None takes ``preset``'s (``paper:*``: ``mcd-reference``, the reference MCD),
    else ``mcd``. The preset's name is recorded in the folder's metadata.
    """
    from featinv.features.backbone import backbone as build_backbone

    if method is None:
        from featinv.presets import get

        method = get(preset).decomposer if preset is not None else "mcd"
    elif preset is not None:
        from featinv.presets import get

        get(preset)  # an unknown name is an error even when the decomposer is given

    try:
        decomposer = create_decomposer(method, n_concepts=n_concepts, **options)
    except TypeError as exc:  # an option name the decomposer does not take (a typo in --option KEY=VALUE)
        raise FeatinvError(f"bad option for the {method} decomposer ({str(exc).split('__init__() ')[-1]}); "
                           "check the --option names in the decomposer's documentation") from None
    decomposer.progress = progress
    items, description = _image_items(data, max_images)
    if isinstance(backbone, str):
        model = build_backbone(backbone, layer=layer, weights=weights, input_size=input_size, device=device)
    else:
        model = backbone
        if layer is not None and layer != model.layer:
            raise FeatinvError(f"the backbone given is cut at {model.layer!r}, not {layer!r}; build it with that layer")
    vectors, skipped = extract_vectors(model, items, batch_size=batch_size, progress=progress)
    weight = classifier_row(model, target_class) if target_class is not None else None
    decomposer.fit(vectors, classifier_weight=weight)
    decomposer.meta = {
        "backbone": model.spec,
        "layer": model.layer,
        "weights": _portable_weights(getattr(model, "weights", weights)),
        "input_size": input_size if isinstance(backbone, str) else model.info.input_size[0],
        "input_hw": list(model.info.input_size),
        "grid": list(model.info.grid),
        "channels": model.info.channels,
        "data": description,
        "n_images": len(items) - len(skipped),
        "skipped_images": len(skipped),
        "n_vectors": int(vectors.shape[0]),
        "energy_explained": round(1.0 - decomposer.relative_error(vectors), 6),
        "target_class": target_class,
        **({"preset": preset} if preset is not None else {}),  # absent without one, as in older folders
    }
    if out is not None:
        decomposer.save(out)
    return decomposer

