"""The built-in ``torchvision:NAME`` backbones: a torchvision classifier, preprocessed as its weights say."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featinv.errors import FeatinvError, closest
from featinv.features.weights import (
    WEIGHT_SUFFIXES,
    build_with_weights,
    offline_error,
    seeded,
)
from featinv.hookspecs import Register, hookimpl

if TYPE_CHECKING:  # torch is imported when a backbone is built, so loading plugins (and --help) stays fast
    import torch
    from torch import Tensor, nn
    from torchvision.models import WeightsEnum

    from featinv.features.backbone import Backbone, ModelKnowledge

_INTERPOLATIONS = {"bilinear", "bicubic", "nearest"}


def _avgpool_input(model: nn.Module, x: Tensor) -> Tensor:
    store: dict[str, Tensor] = {}
    handle = model.avgpool.register_forward_pre_hook(lambda _m, inputs: store.__setitem__("x", inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return store["x"]


def _torchvision_knowledge(model: nn.Module) -> ModelKnowledge:
    from torch import nn
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    from featinv.features.backbone import ModelKnowledge, capture

    if isinstance(model, VisionTransformer):
        patch = model.patch_size

        def encoder_output(m: nn.Module, x: Tensor) -> Tensor:
            with capture(m.encoder) as store:
                m(x)
            return store["output"]

        return ModelKnowledge(prefix_tokens=1, patch_grid=lambda hw: (hw[0] // patch, hw[1] // patch),
                              pre_pool=encoder_output)
    pre_pool = _avgpool_input if isinstance(getattr(model, "avgpool", None), nn.Module) else None
    if isinstance(model, SwinTransformer):  # stages and final norm are channels-last; `permute` makes NCHW
        return ModelKnowledge(channels_last=lambda path: path.split(".")[0] in ("features", "norm"), pre_pool=pre_pool)
    return ModelKnowledge(pre_pool=pre_pool)


def _names_member(weights: str) -> bool:
    """Whether ``weights`` names a weights enum member (not pretrained, none or a file)."""
    return (weights not in ("pretrained", "none") and Path(weights).suffix.lower() not in WEIGHT_SUFFIXES
            and not Path(weights).exists())


def select_weights(model_name: str, weights: str) -> WeightsEnum | None:
    """The torchvision weights enum member ``weights`` names for ``model_name`` (nothing is downloaded).

    ``"pretrained"`` (and ``"none"`` or a file, for the preprocessing) is the builder's ``DEFAULT``, which
    for ResNet50 is the newer ``IMAGENET1K_V2`` recipe; ``IMAGENET1K_V1`` (the paper's "original torchvision
    weights") or any other member name of the builder's weights enum selects that member. ``None``: the
    builder has no registered weights.
    """
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(model_name)
    except Exception:  # a builder without registered weights
        return None
    if not _names_member(weights):
        return enum.DEFAULT
    names = [member.name for member in enum]
    if weights in names:
        return enum[weights]
    if weights.upper() in names:
        return enum[weights.upper()]
    raise FeatinvError(f"torchvision:{model_name} has no weights {weights!r}; use pretrained, none, a local file or "
                       f"one of {', '.join(names)}")


def create_torchvision_backbone(model_name: str | None = None, layer: str | None = None,
                                weights: str = "pretrained", input_size: int | None = None,
                                device: str | torch.device = "cpu") -> Backbone:
    """``torchvision:NAME`` -- a torchvision classifier; preprocessing from its weights' transforms.

    ``weights`` is pretrained (the builder's DEFAULT), none, a local file, or a weights enum member name such
    as ``IMAGENET1K_V1`` (see :func:`select_weights`).
    """
    import torch
    import torchvision.models as tvm
    from torchvision.models.vision_transformer import interpolate_embeddings

    from featinv.features.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocessing

    if not model_name:
        raise FeatinvError("torchvision backbone needs a model name, e.g. torchvision:resnet50")
    spec = f"torchvision:{model_name}"
    names = tvm.list_models(module=tvm)
    if model_name not in names:
        hints = closest(model_name, names, n=5)
        raise FeatinvError(f"unknown torchvision classifier {model_name!r}; "
                           + (f"did you mean {', '.join(hints)}?" if hints else "see torchvision.models.list_models()"))
    default_weights = select_weights(model_name, weights)
    named = default_weights.name if default_weights is not None and _names_member(weights) else None
    if named:
        weights = "pretrained"  # a weights enum member: built like "pretrained", recorded by its name below
    is_vit = model_name.startswith("vit_")
    kwargs: dict[str, Any] = {"image_size": input_size} if is_vit and input_size else {}

    def random_init() -> nn.Module:
        return tvm.get_model(model_name, weights=None, **kwargs)

    def pretrained() -> nn.Module:
        if default_weights is None:
            raise FeatinvError(f"torchvision has no pretrained weights for {model_name}; pass --weights none or a file")
        try:
            if is_vit and input_size and default_weights.meta.get("min_size", (0, 0))[0] != input_size:
                model = seeded(random_init)  # ViT at another size: resample the position embedding
                state = default_weights.get_state_dict(progress=False)
                model.load_state_dict(interpolate_embeddings(input_size, model.patch_size, state))
                return model
            return tvm.get_model(model_name, weights=default_weights)
        except FeatinvError:
            raise
        except Exception as exc:  # offline: URLError, missing cache
            raise offline_error(spec, exc, os.path.join(torch.hub.get_dir(), "checkpoints")) from None

    model, used = build_with_weights(spec, weights, random_init, pretrained)
    used = named or used
    if default_weights is not None:
        transforms = default_weights.transforms()
        size = input_size or int(transforms.crop_size[0])
        interpolation = getattr(transforms.interpolation, "value", "bilinear")
        prep = Preprocessing((size, size), tuple(transforms.mean), tuple(transforms.std),
                             interpolation if interpolation in _INTERPOLATIONS else "bilinear")
    else:
        size = input_size or 224
        prep = Preprocessing((size, size), IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    return Backbone(spec, model, layer, prep, _torchvision_knowledge(model), device=device, weights=used)


@hookimpl
def register_backbones(register: Register) -> None:
    register("torchvision", create_torchvision_backbone,
             description="a torchvision classifier: torchvision:NAME (e.g. torchvision:resnet50)")
