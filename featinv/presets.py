"""Named setups (``--preset paper:convnext``): the paper's backbone, weights, sizes, optimiser and evaluation in one word.

A :class:`Preset` is plain data. :meth:`Preset.train_settings` gives ``TrainConfig`` fields,
:meth:`Preset.eval_settings` keyword arguments of ``featinv.evaluate`` and :attr:`Preset.decomposer` the concept
decomposer of ``featinv concepts fit --preset``; explicit values always win
(``TrainConfig.from_preset(name, lr=2e-5)``, or a flag given on the command line). The built-ins reproduce
the paper (arXiv 2505.21032, Sec. 2 and 4 and supplementary Table 3; the authors trained with PyTorch
Lightning in fp32 without gradient clipping). Plugins add presets with a ``register_presets`` hook, or a
script calls :func:`register`. This module is ground floor: it imports nothing from the layers above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from featinv.errors import FeatinvError, did_you_mean

MINISD = "sd:lambdalabs/miniSD-diffusers"
RESIZE_MODES = ("bilinear", "bicubic", "model")
#: Preset fields that are TrainConfig fields of the same name (``weights`` maps to ``backbone_weights``)
_TRAIN_FIELDS = ("backbone", "layer", "input_size", "pooled", "base", "resolution", "encoder", "lr", "weight_decay", "batch_size",
                 "epochs", "drop_prob", "hflip", "vflip", "mixed_precision", "max_grad_norm", "guidance_scale")
_EVAL_FIELDS = ("guidance_scale", "steps", "scheduler", "per_class", "resize_mode")


@dataclass(frozen=True, kw_only=True)
class Preset:
    """One named setup: what ``featinv train`` and ``featinv eval`` use unless a value is given explicitly."""

    name: str
    description: str
    backbone: str
    weights: str = "pretrained"          # pretrained, none, a file, or a torchvision weights name (IMAGENET1K_V1)
    layer: str | None = None
    input_size: int | None = None
    pooled: bool = False
    base: str = MINISD
    resolution: int | None = 256         # MiniSD's image size; a base folder whose configs say otherwise is refused
    encoder: str = "conv"
    lr: float = 1e-5
    weight_decay: float = 1e-2           # torch's AdamW default, which the authors' code keeps
    batch_size: int = 8
    epochs: float = 3.0
    drop_prob: float = 0.15
    hflip: bool = True
    vflip: bool = True
    mixed_precision: str = "no"          # fp32, as the authors trained
    max_grad_norm: float | None = None   # the authors' Lightning trainer does not clip
    guidance_scale: float | None = None  # None: the run's default (1.75 unpooled, 8 pooled)
    steps: int = 50
    scheduler: str = "ddim"
    per_class: int = 10
    resize_mode: str = "bilinear"        # reconstructions (256 px) to the backbone input, as the paper resizes
    evaluate_with: tuple[str, ...] = ()  # Table 2: the other models, as presets (each at its own size and weights)
    decomposer: str = "mcd"              # `featinv concepts fit --preset`: the concept decomposer (paper: the reference MCD)

    def train_settings(self) -> dict[str, Any]:
        """``TrainConfig`` field values (the preset's name included, so the run config records it)."""
        settings = {name: getattr(self, name) for name in _TRAIN_FIELDS}
        return {**settings, "backbone_weights": self.weights, "preset": self.name}

    def eval_settings(self) -> dict[str, Any]:
        """Keyword arguments of ``featinv.evaluate`` (the run itself holds the backbone and base)."""
        return {**{name: getattr(self, name) for name in _EVAL_FIELDS}, "evaluate_with": list(self.evaluate_with)}

    def judge(self) -> dict[str, Any]:
        """How this preset's backbone judges other models' reconstructions (``--evaluate-with PRESET``)."""
        return {"spec": self.backbone, "weights": self.weights, "input_size": self.input_size}

    def rows(self) -> list[tuple[str, str]]:
        """``(setting, value)`` pairs for the ``featinv presets`` table."""
        skip = ("name", "description")
        return [(f.name, _show(getattr(self, f.name))) for f in dataclasses.fields(self) if f.name not in skip]


def _show(value: Any) -> str:
    if value is None:
        return "(model default)"
    if isinstance(value, tuple):
        return ", ".join(value) or "-"
    return str(value)


def _paper(model: str, backbone: str, layer: str, input_size: int, weights: str = "pretrained") -> list[Preset]:
    """The unpooled and pooled presets of one of the paper's three backbones."""
    others = tuple(f"paper:{m}" for m in ("resnet50", "convnext", "swinv2") if m != model)
    common = dict(backbone=backbone, layer=layer, input_size=input_size, weights=weights, evaluate_with=others,
                  decomposer="mcd-reference")  # MCD fitted as the authors' MCD-XAI code fits it
    return [
        Preset(name=f"paper:{model}", guidance_scale=1.75, description=f"the paper's unpooled {model} model", **common),
        Preset(name=f"paper:{model}-pooled", pooled=True, guidance_scale=8.0,
               description=f"the paper's pooled {model} baseline", **common),
    ]


BUILTIN: tuple[Preset, ...] = (
    # "original torchvision weights" (the paper): IMAGENET1K_V1; torchvision's DEFAULT is the newer V2 recipe
    *_paper("resnet50", "torchvision:resnet50", "layer4", 224, weights="IMAGENET1K_V1"),
    # timm's config trains at 224 and tests at 288; the paper uses 288 (supplementary Table 3): 1024x9x9
    *_paper("convnext", "timm:convnext_base.fb_in22k_ft_in1k", "stages.3", 288),
    # the paper's swinv2_base_window12to24_192to384_22kft1k, under its current timm name: 1024x12x12
    *_paper("swinv2", "timm:swinv2_base_window12to24_192to384.ms_in22k_ft_in1k", "norm", 384),
)

_REGISTERED: dict[str, Preset] = {}
_PLUGINS_LOADED = False


def register(preset: Preset) -> None:
    """Add ``preset`` (what a plugin's ``register_presets`` hook calls); a taken name is refused."""
    if not isinstance(preset, Preset):
        raise FeatinvError(f"register takes a featinv.presets.Preset, got {type(preset).__name__}")
    if preset.name in _all():
        raise FeatinvError(f"preset {preset.name!r} is registered twice; give it another name")
    _REGISTERED[preset.name] = preset


def _all() -> dict[str, Preset]:
    _load_plugins()
    return {**{p.name: p for p in BUILTIN}, **_REGISTERED}


def _load_plugins() -> None:
    """Call every plugin's ``register_presets`` hook once (a failing hook is reported, never fatal)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from featinv.registry import plugin_manager

    hook: Callable[..., Any] | None = getattr(plugin_manager().hook, "register_presets", None)
    if hook is None:
        return
    try:
        hook(register=register)
    except FeatinvError:
        raise
    except Exception as exc:  # a broken plugin must not take the built-in presets down
        import warnings

        warnings.warn(f"a plugin's register_presets failed ({type(exc).__name__}: {exc}); its presets are missing",
                      stacklevel=2)


def names() -> list[str]:
    """Every preset name, built-ins first."""
    return list(_all())


def get(name: str | Preset) -> Preset:
    """The preset called ``name`` (a Preset passes through); an unknown name gets close matches."""
    if isinstance(name, Preset):
        return name
    presets = _all()
    if name not in presets:
        raise FeatinvError(f"unknown preset {name!r}: {did_you_mean(name, presets)} (run `featinv presets`)")
    return presets[name]


def is_preset(name: str) -> bool:
    """Whether ``name`` is a preset (``--evaluate-with`` takes a backbone spec or a preset name)."""
    return name in _all()
