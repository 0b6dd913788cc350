"""featinv: map a vision model's feature maps back to images (FeatInv) and analyse what it sees.

The public API is flat: ``featinv.backbone``, ``featinv.FeatInv``, ``featinv.train`` ... Names are
imported lazily so that ``import featinv`` (and ``featinv --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from featinv.hookspecs import hookimpl, hookspec

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "FeatinvError": "featinv.errors",
    "evaluate": "featinv.evaluation.evaluate",
    "EvalResult": "featinv.evaluation.evaluate",
    "class_baseline": "featinv.evaluation.baseline",
    "cosine_median": "featinv.evaluation.metrics",
    "topk_match": "featinv.evaluation.metrics",
    "mean_ci95": "featinv.evaluation.metrics",
    "frechet_distance": "featinv.evaluation.fid",
    "kernel_distance": "featinv.evaluation.fid",
    "FeatInv": "featinv.diffusion.model",
    "Reconstruction": "featinv.diffusion.model",
    "FeatureGuidance": "featinv.diffusion.guidance",
    "DiffusionBase": "featinv.diffusion.bases",
    "PixelBase": "featinv.diffusion.bases",
    "load_base": "featinv.diffusion.bases",
    "FeatInvControlNet": "featinv.diffusion.controlnet",
    "FeatureEncoder": "featinv.diffusion.encoders",
    "reconstruct_images": "featinv.apps.reconstruct_folder",
    "reconstruction_plan": "featinv.apps.reconstruct_plan",
    "evaluation_plan": "featinv.evaluation.plan",
    "training_plan": "featinv.training.plan",
    "backbone": "featinv.features.backbone",
    "Backbone": "featinv.features.backbone",
    "FeatureInfo": "featinv.features.backbone",
    "LayerInfo": "featinv.features.backbone",
    "pool_features": "featinv.features.backbone",
    "Decomposer": "featinv.concepts.base",
    "Decomposition": "featinv.concepts.base",
    "fit_concepts": "featinv.concepts.fit",
    "load_decomposer": "featinv.concepts.base",
    "show_concepts": "featinv.concepts.maps",
    "concept_activation_maps": "featinv.concepts.maps",
    "list_backbones": "featinv.registry",
    "create_backbone": "featinv.registry",
    "is_backbone": "featinv.registry",
    "list_bases": "featinv.registry",
    "create_base": "featinv.registry",
    "is_base": "featinv.registry",
    "list_encoders": "featinv.registry",
    "create_encoder": "featinv.registry",
    "is_encoder": "featinv.registry",
    "list_decomposers": "featinv.registry",
    "create_decomposer": "featinv.registry",
    "is_decomposer": "featinv.registry",
    "list_analyses": "featinv.registry",
    "create_analysis": "featinv.registry",
    "is_analysis": "featinv.registry",
    "plugin_listing": "featinv.registry",
    "builtin_photos": "featinv.data",
    "find_images": "featinv.data",
    "open_image": "featinv.data",
    "train": "featinv.training.loop",
    "TrainConfig": "featinv.training.config",
    "Preset": "featinv.presets",
    "train_base": "featinv.training.loop",
    "BaseTrainConfig": "featinv.training.config",
    "steer_concepts": "featinv.analyses.steering",
    "Steering": "featinv.analyses.steering",
    "FeatInvViz": "featinv.analyses.steering",
    "interpolate": "featinv.analyses.interpolation",
    "Interpolation": "featinv.analyses.interpolation",
    "compose": "featinv.analyses.compose",
    "Composition": "featinv.analyses.compose",
    "FeatureShiftWarning": "featinv.analyses.shift",
    "run_demo": "featinv.apps.demo",
    "DemoResult": "featinv.apps.demo",
}

__all__ = ["__version__", "hookimpl", "hookspec", *_LAZY, "presets"]


#: submodules reachable as attributes without importing them first (``featinv.presets.get("paper:resnet50")``)
_SUBMODULES = ("presets",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"featinv.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featinv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
