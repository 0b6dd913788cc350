"""What a training run is asked to do: the loop's settings and those of the two models it trains.

``LoopConfig`` holds everything the shared loop needs (steps, optimiser, checkpoints, precision); ``TrainConfig``
(``featinv train``) and ``BaseTrainConfig`` (``featinv base train``) add their model's settings. Each config
checks its own values so bad input is refused with one line before any model is built or any file written.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featinv.diffusion.consistency import DEFAULT_MAX_T, FeatureConsistency
from featinv.errors import FeatinvError
from featinv.training.data import CROP_SCALE
from featinv.training.speed import check_speed_options
from featinv.validation import MAX_EPOCHS, check_number, check_steps

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
FEATURES_FROM = ("crop", "target")
#: encoder ``__init__`` arguments that FeatInv sets from the backbone and the base, never the user
ENCODER_SIZES = ("in_channels", "out_channels", "grid")


@dataclass(kw_only=True)
class LoopConfig:
    """Settings of the shared training loop (defaults: the paper's AdamW, lr 1e-5, batch 8, 3 epochs)."""

    out: str | os.PathLike[str]
    data: Any = None                       # folder path, list of PIL images, or TrainingImages
    max_samples: int | None = None         # seeded random subset of the data
    epochs: float = 3.0
    max_steps: int | None = None           # overrides epochs when set
    batch_size: int = 8                    # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    max_grad_norm: float | None = 1.0
    drop_prob: float = 0.15                # conditioning + prompt dropped together (classifier-free guidance)
    mixed_precision: str = "no"            # no | bf16 | fp16
    gradient_checkpointing: bool = False
    tf32: bool = True
    num_workers: int = 2
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: bool = False
    log_every: int = 10
    validate_every: int = 0                # 0: only at the end
    num_val_images: int = 4
    val_steps: int = 20
    tracker: str | None = None             # "tensorboard" (through accelerate's trackers)
    device: str | None = None              # None: what accelerate picks (the GPU of this process, else CPU)
    progress: bool = True
    # GPU speed options (featinv.training.speed): None / "auto" = on for CUDA, no-op on a CPU
    channels_last: bool | None = None      # NHWC weights + activations for every network in the step
    optimizer_impl: str = "auto"           # AdamW kernel: auto (fused on CUDA) | fused | foreach | loop
    compile: bool = False                  # torch.compile the denoiser step and the backbone (minutes of warm-up)
    compile_mode: str | None = None        # torch.compile mode; reduce-overhead = CUDA graphs (small batches)

    def check(self) -> None:
        """Refuse bad numbers before any model is built."""
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "checkpoint_every": self.checkpoint_every, "keep_checkpoints": self.keep_checkpoints,
                    "log_every": self.log_every, "val_steps": self.val_steps}
        for name, value in positive.items():
            if int(value) < 1:
                raise FeatinvError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise FeatinvError(f"max-steps must be at least 1, got {self.max_steps}")
        check_steps(self.val_steps, name="val-steps")  # validation samples after training: fail before it
        if self.max_steps is None:
            check_number(self.epochs, "epochs", low=0.0, high=MAX_EPOCHS)
            if not self.epochs > 0:
                raise FeatinvError(f"epochs must be positive, got {self.epochs}")
        if not self.lr > 0:
            raise FeatinvError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise FeatinvError(f"drop probability must be in [0, 1], got {self.drop_prob}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise FeatinvError(f"mixed precision {self.mixed_precision!r} unknown; use one of {', '.join(MIXED_PRECISION)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise FeatinvError(f"lr schedule {self.lr_schedule!r} unknown; use one of {', '.join(LR_SCHEDULES)}")
        if self.tracker not in (None, "tensorboard"):
            raise FeatinvError(f"tracker {self.tracker!r} unknown; use tensorboard or leave it off")
        if self.num_workers < 0:
            raise FeatinvError(f"num-workers must be >= 0, got {self.num_workers}")
        if self.data is None:
            raise FeatinvError("no training data; pass --data DIR (a folder of images)")
        check_speed_options(self)

    def to_json(self) -> dict[str, Any]:
        """The config as JSON (in-memory data is described, not stored)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "data" and not isinstance(value, (str, os.PathLike)):
                value = f"<{len(value)} in-memory images>" if hasattr(value, "__len__") else repr(value)
            elif isinstance(value, os.PathLike):
                value = os.fspath(value)
            elif hasattr(value, "spec"):  # an already-built backbone or base object
                value = value.spec
            out[f.name] = value
        return out


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    """``featinv train``: a FeatInv ControlNet on a frozen base, conditioned on a backbone's feature map."""

    backbone: Any = "timm:convnext_base"      # a spec, or an already-built Backbone
    base: Any = "sd:lambdalabs/miniSD-diffusers"  # a spec (sd:…, pixel:…), or an already-built DiffusionBase
    layer: str | None = None
    pooled: bool = False
    encoder: str = "conv"
    encoder_kwargs: dict[str, Any] | None = None  # --encoder-option KEY=VALUE: the encoder's __init__ options
    backbone_weights: str = "pretrained"
    input_size: int | None = None
    resolution: int | None = None          # the base's image size; None: what its configs say (checked to agree)
    hflip: bool = True
    vflip: bool = True
    crop_scale: tuple[float, float] = CROP_SCALE
    cache_features: bool = False           # features + targets computed once for a fixed set of crops
    cache_views: int = 1                   # crops per image in the cache (1: the centre crop)
    guidance_scale: float | None = None    # for validation grids (None: the model's default)
    backbone_chunk: int | None = None      # backbone forward chunk (None: whole batch on GPU, 2 on CPU)
    # what the backbone sees: "crop" = the crop at the backbone's own input size (the paper, where base and
    # backbone resolutions are close); "target" = the image the base learns to generate, resized to the
    # backbone input, i.e. exactly what the backbone will see of a reconstruction (use when the base
    # resolution is far below the backbone's, e.g. a 32 px base under a 128 px backbone)
    features_from: str = "crop"
    # feature-consistency loss (featinv.diffusion.consistency): weight 0 = the paper's loss; the term applies
    # only below timestep consistency_max_t, on a random consistency_fraction of the batch
    consistency_weight: float = 0.0
    consistency_max_t: int = DEFAULT_MAX_T
    consistency_fraction: float = 1.0
    # the frozen UNet/VAE/backbone's weight precision: auto = the --mixed-precision dtype on CUDA, else fp32
    frozen_precision: str = "auto"
    cache_latents: bool = False            # with cache_features: also VAE-encode the fixed crops once

    preset: str | None = None              # the featinv.presets name the settings came from (recorded in the run)

    @classmethod
    def from_preset(cls, preset: Any, **overrides: Any) -> TrainConfig:
        """A config with a preset's values (``"paper:convnext"`` or a Preset); ``overrides`` win over them."""
        from featinv.presets import get

        return cls(**{**get(preset).train_settings(), **overrides})

    def check(self) -> None:
        super().check()
        if self.cache_latents and not self.cache_features:
            raise FeatinvError("--cache-latents needs --cache-features (it encodes the cache's fixed crops once)")
        if self.features_from not in FEATURES_FROM:
            raise FeatinvError(f"features-from {self.features_from!r} unknown; use one of {', '.join(FEATURES_FROM)}")
        check_encoder_options(self.encoder, self.encoder_kwargs)
        self.consistency()

    def consistency(self) -> FeatureConsistency:
        """The consistency-loss settings as one checked object (a bad value is a one-line error)."""
        return FeatureConsistency(weight=self.consistency_weight, max_t=self.consistency_max_t,
                                  fraction=self.consistency_fraction)


@dataclass(kw_only=True)
class BaseTrainConfig(LoopConfig):
    """``featinv base train``: a small pixel-space diffusion base from scratch (offline / CPU use)."""

    resolution: int = 32
    widths: tuple[int, ...] = (32, 64, 64)
    prediction_type: str = "epsilon"
    lr: float = 2e-4
    epochs: float = 50.0
    hflip: bool = True
    vflip: bool = False                    # natural photos are rarely upside down; the base learns their prior
    crop_scale: tuple[float, float] = (0.25, 1.0)


# ----------------------------------------------------------------------------------------- encoder options
def encoder_option_names(encoder: str) -> list[str] | None:
    """The options encoder ``encoder`` takes: its class's ``__init__`` keywords, less the sizes FeatInv sets.

    The class is the registered factory itself, or else the loaded ``FeatureEncoder`` subclass whose
    ``encoder_name`` is ``encoder`` (a factory function may import its class only when it first builds one).
    ``None`` when the class is not known yet or takes ``**kwargs`` (then only building it can tell).
    """
    from featinv.diffusion.encoders import FeatureEncoder
    from featinv.registry import get_registry

    factory = get_registry("encoders").get(encoder).factory
    if isinstance(factory, type):
        cls: type | None = factory
    else:
        cls = next((c for c in _subclasses(FeatureEncoder) if c.encoder_name == encoder.partition(":")[0]), None)
    if cls is None:
        return None
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return sorted(p.name for p in parameters if p.kind in keywords and p.name not in ENCODER_SIZES)


def _subclasses(cls: type) -> list[type]:
    """Every loaded subclass of ``cls``, however deep."""
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def check_encoder_options(encoder: str, options: Mapping[str, Any] | None) -> None:
    """Refuse an option encoder ``encoder`` does not take, naming the ones it does (when they can be known)."""
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise FeatinvError(f"encoder options must be a dict of name -> value, got {type(options).__name__}; "
                           "e.g. encoder_kwargs={'hidden': 256}")
    valid = encoder_option_names(encoder)
    if valid is None:
        return
    unknown = [key for key in options if key not in valid]
    if unknown:
        listed = ", ".join(valid) if valid else "none"
        raise FeatinvError(f"encoder {encoder!r} has no option {', '.join(map(repr, unknown))}; its options are: "
                           f"{listed} (pass them as --encoder-option KEY=VALUE)")
