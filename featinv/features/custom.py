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
from typing import Any

import torch
from torch import nn

from featinv.errors import FeatinvError
from featinv.features.backbone import Backbone

__all__ = ["OPTION_NAMES", "from_factory_result", "wrap_module"]

#: what a factory's options dict (or :meth:`Backbone.from_module`'s keywords) may set
OPTION_NAMES = ("input_size", "mean", "std", "interpolation", "patch_size", "prefix_tokens", "channels_last",
                "classifier")


def wrap_module(module: nn.Module, layer: str | None = None, **options: Any) -> Backbone:
    """Same as :meth:`Backbone.from_module` (and ``featinv.backbone(module, ...)``)."""
    return Backbone.from_module(module, layer, **options)


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

