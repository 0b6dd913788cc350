"""Bring your own model: any ``torch.nn.Module`` as a :class:`~featinv.features.backbone.Backbone`.

A plain module does not know its input size, normalisation or token layout, so the caller says them
(:func:`wrap_module`); what is not said falls back to 224×224 and the ImageNet mean/std. A ``py:`` factory
(``--backbone py:package.module:factory``) returns the module alone, ``(module, options)``, a dict with a
``"model"`` key plus options, or a ready :class:`Backbone`; :func:`from_factory_result` reads all of these.

A 2-D tensor output counts as class logits; pass ``classifier=False`` for an encoder whose output is an
embedding, so nothing reads its dimensions as classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from featinv.errors import FeatinvError
from featinv.features.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, ModelKnowledge, Preprocessing

__all__ = ["OPTION_NAMES", "from_factory_result", "normalisation", "wrap_module"]

#: what a factory's options dict (or :func:`wrap_module`'s keywords) may set
OPTION_NAMES = ("input_size", "mean", "std", "interpolation", "patch_size", "prefix_tokens", "channels_last",
                "classifier")
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _size(value: Any) -> tuple[int, int]:
    size = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, Sequence) else ()
    if len(size) != 2 or not all(isinstance(v, int) and v >= 8 for v in size):
        raise FeatinvError(f"input_size must be an integer of at least 8 or a pair (H, W), got {value!r}")
    return (int(size[0]), int(size[1]))


def _triple(value: Any, what: str, positive: bool = False) -> tuple[float, float, float]:
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, (int, float)) else value
    try:
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or (positive and min(values) <= 0):
        kind = "positive numbers" if positive else "numbers"
        raise FeatinvError(f"{what} must be 1 or 3 {kind} (one per RGB channel), got {value!r}; e.g. 0.5,0.5,0.5")
    return values  # type: ignore[return-value]


def normalisation(mean: Any = None, std: Any = None) -> dict[str, tuple[float, float, float]]:
    """The given ``mean``/``std`` checked (1 or 3 numbers each), for :class:`Preprocessing` fields."""
    out = {}
    if mean is not None:
        out["mean"] = _triple(mean, "mean")
    if std is not None:
        out["std"] = _triple(std, "std", positive=True)
    return out


def _knowledge(patch_size: int | Sequence[int] | None, prefix_tokens: int, channels_last: bool,
               classifier: bool) -> ModelKnowledge:
    patch_grid = None
    if patch_size is not None:
        ph, pw = _size(patch_size) if not isinstance(patch_size, int) else (patch_size, patch_size)

        def patch_grid(hw: tuple[int, int]) -> tuple[int, int]:
            return hw[0] // ph, hw[1] // pw
    if not isinstance(prefix_tokens, int) or prefix_tokens < 0:
        raise FeatinvError(f"prefix_tokens must be a non-negative integer, got {prefix_tokens!r}")
    return ModelKnowledge(prefix_tokens=prefix_tokens, patch_grid=patch_grid,
                          channels_last=lambda path: bool(channels_last), pre_pool=_global_pool_input,
                          logits_of=None if classifier else (lambda output: None))


def _global_pool_input(model: nn.Module, x: Tensor) -> Tensor | None:
    """The tensor the model's last adaptive (global) pooling receives, so the default layer is the map
    before it; None (a model without one) falls back to the last top-level module with a grid."""
    pools = [m for m in model.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
    store: dict[str, Tensor] = {}
    handle = pools[-1].register_forward_pre_hook(lambda _m, inputs: store.__setitem__("x", inputs[0])) if pools else None
    try:
        model(x)
    finally:
        if handle is not None:
            handle.remove()
    return store.get("x")


def wrap_module(module: nn.Module, layer: str | None = None, *, input_size: int | Sequence[int] | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                interpolation: str = "bilinear", patch_size: int | Sequence[int] | None = None,
                prefix_tokens: int = 0, channels_last: bool = False, classifier: bool = True,
                spec: str | None = None, weights: str = "none",
                device: str | torch.device = "cpu") -> Backbone:
    """Wrap a user's ``nn.Module`` (frozen, eval mode) cut at ``layer`` (a module path; None: last spatial map).

    ``input_size`` (default 224), ``mean``/``std`` (default ImageNet) and ``interpolation`` are its
    preprocessing; ``patch_size`` and ``prefix_tokens`` describe token outputs ``[B, N, C]`` (a ViT with a
    class token: ``patch_size=16, prefix_tokens=1``); ``channels_last`` marks NHWC 4-D outputs;
    ``classifier=False`` says a 2-D output is an embedding, not class logits.
    """
    if not isinstance(module, nn.Module):
        raise FeatinvError(f"expected a torch.nn.Module to wrap, got {type(module).__name__}")
    if interpolation not in _INTERPOLATIONS:
        raise FeatinvError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {interpolation!r}")
    norm = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **normalisation(mean, std)}
    prep = Preprocessing(_size(input_size if input_size is not None else 224), interpolation=interpolation, **norm)
    knowledge = _knowledge(patch_size, prefix_tokens, channels_last, classifier)
    name = spec or f"module:{type(module).__module__}.{type(module).__qualname__}"
    return Backbone(name, module, layer, prep, knowledge, device=device, weights=weights)


def _split_result(result: Any, spec: str) -> tuple[Any, dict[str, Any]]:
    """A factory's return value as (module or Backbone, options)."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
        return result[0], dict(result[1])
    if isinstance(result, dict):
        if "model" not in result:
            raise FeatinvError(f"the factory of {spec} returned a dict without a 'model' key; return the module, "
                               "(module, options) or {'model': module, 'input_size': ...}")
        options = dict(result)
        return options.pop("model"), options
    return result, {}


def from_factory_result(result: Any, spec: str, layer: str | None = None, weights: str = "pretrained",
                        device: str | torch.device = "cpu", **overrides: Any) -> Backbone:
    """Turn what a ``py:`` factory returned into a Backbone; non-None ``overrides`` (CLI options) win.

    ``weights``: "pretrained"/"none" keep the factory's own weights; a file is loaded on top by name.
    """
    from featinv.features.weights import apply_state_dict, read_state_dict

    module, options = _split_result(result, spec)
    if isinstance(module, Backbone):
        return module
    if not isinstance(module, nn.Module):
        raise FeatinvError(f"the factory of {spec} returned {type(module).__name__}, not a torch.nn.Module; "
                           "return the model (optionally with a dict of preprocessing options)")
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise FeatinvError(f"the factory of {spec} returned unknown options {', '.join(unknown)}; "
                           f"use {', '.join(OPTION_NAMES)}")
    options.update({k: v for k, v in overrides.items() if v is not None})
    used = weights
    if weights not in ("pretrained", "none"):
        if not os.path.exists(weights):
            raise FeatinvError(f"weights {weights!r} is neither 'pretrained', 'none' nor an existing file; "
                               "pass one of those")
        apply_state_dict(module, read_state_dict(weights), str(weights), spec)
    return wrap_module(module, layer, spec=spec, weights=used, device=device, **options)

