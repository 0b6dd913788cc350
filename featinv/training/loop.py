"""Training: one generic loop shared by FeatInv (``featinv train``) and the pixel base (``featinv base train``).

The loop knows nothing about ControlNets: a small *task* object supplies the trainable parameters, the
dataset, how a batch becomes model inputs (e.g. backbone features computed batched on the GPU), the loss,
a validation grid and how to save the result. The loop adds everything that makes long runs safe:

- HF Accelerate for devices, multi-GPU/multi-node (``accelerate launch``), mixed precision (bf16/fp16);
  each process trains on its own disjoint shard of every global batch (:class:`ShardedBatches`).
- Exact resume: all randomness (data order, crops, flips, dropout of the conditioning, noise and
  timesteps) is derived from ``(seed, step)``; checkpoints hold weights, optimizer, lr-scheduler,
  grad-scaler and RNG state, are written atomically and rotated (newest K kept).
- Ctrl-C / SIGTERM finish the current step, write a checkpoint + a loadable model, then stop.
- A non-finite loss stops the run before the optimizer touches the weights (last good checkpoint kept).
- A rich progress bar (loss, samples/s, ETA), ``metrics.jsonl``, validation PNG grids, optional TensorBoard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from featinv.data import to_pil
from featinv.diffusion.sampler import denoise
from featinv.errors import FeatinvError
from featinv.io import atomic_path, ensure_output_dir, read_json, write_json, write_text
from featinv.training.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    load_parameter_state,
    parameter_state,
    restore_rng,
    save_checkpoint,
)
from featinv.training.data import (
    CROP_SCALE,
    AugmentedCrops,
    Schedule,
    ShardedBatches,
    TensorSamples,
    TrainingImages,
    load_training_images,
    mix_seed,
)

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "train_state.json"
CONFIG_FILE = "train_config.json"
VALIDATION_DIR = "validation"
MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
FEATURES_FROM = ("crop", "target")

StepCallback = Callable[[int, float], None]


# ------------------------------------------------------------------------------------------- configs
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
        if self.max_steps is None and not self.epochs > 0:
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
    encoder_kwargs: dict[str, Any] | None = None
    backbone_weights: str = "pretrained"
    input_size: int | None = None
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

    def check(self) -> None:
        super().check()
        if self.features_from not in FEATURES_FROM:
            raise FeatinvError(f"features-from {self.features_from!r} unknown; use one of {', '.join(FEATURES_FROM)}")


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


# -------------------------------------------------------------------------------------------- tasks
class Task(Protocol):
    """What the loop needs from a model being trained (implemented for FeatInv and the pixel base)."""

    kind: str

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters to optimise, with stable names for checkpoints."""

    def dataset(self) -> torch.utils.data.Dataset:
        """Samples indexed by ``(index, sample_seed)``."""

    def inputs(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Turn a collated batch into loss inputs (the batched backbone forward happens here)."""

    def loss(self, inputs: dict[str, torch.Tensor], drop: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training objective for one micro-batch."""

    def train_mode(self, training: bool) -> None:
        """Switch the trainable modules between train and eval mode."""

    def enable_gradient_checkpointing(self) -> None:
        """Trade compute for memory in every module the gradient passes through."""

    def validation_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference row, generated row), both [n,3,R,R] in [0,1]."""

    def save(self, out: Path) -> None:
        """Write the trained model as a loadable folder."""

    def describe(self) -> dict[str, Any]:
        """Settings that must not change when resuming."""

    def summary(self) -> str:
        """One line for the log."""


def _to_float01(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


class FeatInvTask:
    """Train FeatInv's ControlNet + encoder; backbone and base stay frozen."""

    kind = "featinv"

    def __init__(self, config: TrainConfig, device: torch.device, is_main: bool = True,
                 wait: Callable[[], None] = lambda: None) -> None:
        from featinv.diffusion.model import FeatInv

        self.config = config
        torch.manual_seed(config.seed)  # the encoder's random (non-zero) layers
        self.model = FeatInv.create(config.backbone, config.base, layer=config.layer, pooled=config.pooled,
                                    encoder=config.encoder, encoder_kwargs=config.encoder_kwargs,
                                    backbone_weights=config.backbone_weights, input_size=config.input_size,
                                    device=device)
        self.device = device
        self.images = load_training_images(config.data, max_samples=config.max_samples, seed=config.seed)
        info = self.model.backbone.info
        self.view = config.features_from  # which view of each sample the backbone sees
        self.sizes = {"target": int(self.model.base.resolution)}
        if self.view == "crop":
            self.sizes["crop"] = int(info.input_size[0])
        if info.input_size[0] != info.input_size[1]:
            raise FeatinvError(f"training needs a square backbone input, got {info.input_size}; pass --input-size")
        self._params = [(f"p{i:05d}", p) for i, p in enumerate(self.model.trainable_parameters())]
        self._names = self._parameter_names()
        self._cache: TensorSamples | None = None
        if config.cache_features:
            self._cache = self._build_cache(is_main, wait)

    def _parameter_names(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Readable names (controlnet.…) for the trainable parameters, for checkpoints."""
        names = {id(p): f"controlnet.{n}" for n, p in self.model.controlnet.named_parameters()}
        return [(names.get(id(p), key), p) for key, p in self._params]

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return self._names

    def summary(self) -> str:
        info = self.model.backbone.info
        return (f"{self.images.summary()}; backbone {info.spec} layer {info.layer} "
                f"({info.channels}x{info.grid[0]}x{info.grid[1]}); base {self.model.base.spec}")

    def describe(self) -> dict[str, Any]:
        info = self.model.backbone.info
        return {"backbone": info.spec, "layer": info.layer, "pooled": self.config.pooled,
                "base": self.model.base.spec, "n": len(self.dataset()), **self._non_default_view()}

    def _non_default_view(self) -> dict[str, str]:
        """The backbone's view for resume checks and cache keys, left out when it is the default ("crop"), so
        runs and feature caches written before the option existed still match."""
        return {"features_from": self.view} if self.view != "crop" else {}

    # -- data
    def _crops(self, augment: bool) -> AugmentedCrops:
        c = self.config
        return AugmentedCrops(self.images, self.sizes, augment=augment, hflip=c.hflip, vflip=c.vflip, scale=c.crop_scale)

    @torch.no_grad()
    def features(self, crops01: torch.Tensor) -> torch.Tensor:
        """Backbone features for a batch of images (resized to the backbone input), batched on the training device.

        On a GPU the whole batch is one forward. On a CPU large batches are slower than small ones
        (activations fall out of cache: measured 1.05 s for 8 x 224 px EfficientNet-Lite0 at once vs
        0.56 s in pairs), so the batch runs in chunks of ``backbone_chunk`` (default 2 on CPUs).
        """
        backbone = self.model.backbone
        chunk = self.config.backbone_chunk or (len(crops01) if crops01.device.type != "cpu" and
                                               self.device.type != "cpu" else 2)
        parts = [backbone.features(backbone.normalize(part), pooled=self.model.pooled)
                 for part in crops01.split(max(1, chunk))]
        return torch.cat(parts)

    def _cache_key(self) -> str:
        c = self.config
        info = self.model.backbone.info
        payload = {"backbone": info.spec, "layer": info.layer, "weights": c.backbone_weights,
                   "input": list(info.input_size), "pooled": c.pooled, "target": self.sizes["target"],
                   "views": c.cache_views, "seed": c.seed, "scale": list(c.crop_scale),
                   "items": [str(i) if isinstance(i, Path) else f"img{k}:{i.size}" for k, i in enumerate(self.images.items)],
                   **self._non_default_view()}
        import hashlib

        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def _build_cache(self, is_main: bool, wait: Callable[[], None]) -> TensorSamples:
        """Compute features + targets once (main process), save them, and train from memory afterwards."""
        from featinv.io import load_safetensors, save_safetensors
        from featinv.progress import progress

        c = self.config
        path = Path(c.out) / f"feature_cache-{self._cache_key()}.safetensors"
        if is_main and not path.is_file():
            views = max(1, int(c.cache_views))
            centre, augmented = self._crops(augment=False), self._crops(augment=True)
            keys = [(i, v) for v in range(views) for i in range(len(self.images))]
            feats, targets = [], []
            batch = max(1, c.batch_size * 4)
            chunks = [keys[s:s + batch] for s in range(0, len(keys), batch)]
            for chunk in progress(chunks, description="caching features", enabled=c.progress):
                items = [(centre if v == 0 else augmented)[(i, mix_seed(c.seed, 7919, v, i))] for i, v in chunk]
                crops = torch.stack([it[self.view] for it in items])
                feats.append(self.features(_to_float01(crops, self.device)).cpu())
                targets.append(torch.stack([it["target"] for it in items]))
            save_safetensors({"features": torch.cat(feats), "target": torch.cat(targets)}, path)
        wait()
        return TensorSamples(load_safetensors(path))

    def dataset(self) -> torch.utils.data.Dataset:
        return self._cache if self._cache is not None else self._crops(augment=True)

    def inputs(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        target = _to_float01(batch["target"], device)
        if "features" in batch:
            return {"features": batch["features"].to(device, non_blocking=True).float(), "target": target}
        return {"features": self.features(_to_float01(batch[self.view], device)), "target": target}

    def loss(self, inputs: dict[str, torch.Tensor], drop: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model.training_loss(inputs["features"], inputs["target"], drop, generator=generator)

    def train_mode(self, training: bool) -> None:
        self.model.controlnet.train(training)

    def enable_gradient_checkpointing(self) -> None:
        self.model.controlnet.enable_gradient_checkpointing()
        unet = self.model.base.unet
        unet.enable_gradient_checkpointing()
        unet.train()  # diffusers checkpoints only in train mode; the frozen UNet has no dropout/batch-norm state

    @torch.no_grad()
    def validation_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops = self._crops(augment=False)
        items = [crops[(i, 0)] for i in range(min(n, len(self.images)))]
        reference = torch.stack([it["target"] for it in items]).float() / 255.0
        features = self.features(_to_float01(torch.stack([it[self.view] for it in items]), self.device))
        c = self.config
        kwargs = {"guidance_scale": c.guidance_scale} if c.guidance_scale is not None else {}
        rec = self.model.reconstruct(features=features, seeds=list(range(len(items))), steps=c.val_steps,
                                     progress=False, **kwargs)
        return reference, rec.images.float().cpu()

    def save(self, out: Path) -> None:
        self.model.save_pretrained(out)


class PixelBaseTask:
    """Train a small pixel-space base (UNet + prompt table) from scratch."""

    kind = "pixel-base"

    def __init__(self, config: BaseTrainConfig, device: torch.device) -> None:
        from featinv.diffusion.bases import PixelBase

        self.config = config
        if config.resolution not in (32, 64):
            raise FeatinvError(f"pixel base resolution must be 32 or 64, got {config.resolution}")
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise FeatinvError(f"prediction type {config.prediction_type!r} unknown; use epsilon or v_prediction")
        self.base = PixelBase.create(resolution=config.resolution, widths=tuple(config.widths),
                                     prediction_type=config.prediction_type, seed=config.seed, device=device)
        self.device = device
        self.images = load_training_images(config.data, max_samples=config.max_samples, seed=config.seed)
        params = self.base.trainable_parameters()
        names = {id(p): f"unet.{n}" for n, p in self.base.unet.named_parameters()}
        names[id(self.base.prompt_embeds)] = "prompt_embeds"
        self._names = [(names[id(p)], p) for p in params]

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return self._names

    def summary(self) -> str:
        n = sum(p.numel() for _, p in self._names)
        return f"{self.images.summary()}; pixel base {self.config.resolution}px, {n / 1e6:.2f}M parameters"

    def describe(self) -> dict[str, Any]:
        return {"resolution": self.config.resolution, "widths": list(self.config.widths), "n": len(self.images)}

    def dataset(self) -> torch.utils.data.Dataset:
        c = self.config
        return AugmentedCrops(self.images, {"target": c.resolution}, augment=True, hflip=c.hflip, vflip=c.vflip,
                              scale=c.crop_scale)

    def inputs(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        return {"target": _to_float01(batch["target"], device)}

    def loss(self, inputs: dict[str, torch.Tensor], drop: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.base.training_loss(inputs["target"], drop, generator=generator)

    def train_mode(self, training: bool) -> None:
        self.base.unet.train(training)

    def enable_gradient_checkpointing(self) -> None:
        self.base.unet.enable_gradient_checkpointing()

    @torch.no_grad()
    def validation_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops = AugmentedCrops(self.images, {"target": self.config.resolution}, augment=False)
        reference = torch.stack([crops[(i, 0)]["target"] for i in range(min(n, len(self.images)))]).float() / 255.0
        return reference, sample_base(self.base, len(reference), steps=self.config.val_steps).cpu()

    def save(self, out: Path) -> None:
        self.base.save_pretrained(out)


@torch.no_grad()
def sample_base(base: Any, n: int, steps: int = 20, seed: int = 0) -> torch.Tensor:
    """Plain DDIM samples of a base with its prompt (no ControlNet): what the base alone has learned."""
    embeds = base.prompt_embeddings(torch.zeros(n, dtype=torch.bool))
    shape = (base.latent_channels, base.latent_size, base.latent_size)
    latents = denoise(base.unet, None, base.make_scheduler("ddim"), None, embeds, embeds, range(seed, seed + n),
                      shape, steps=steps, guidance_scale=1.0)
    return base.decode(latents)


# ---------------------------------------------------------------------------------------- the loop
def conditioning_drop(n: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Which samples lose their conditioning (feature map zeroed and prompt emptied together): Bernoulli(prob)."""
    return torch.rand(n, generator=generator) < prob


class _LossModule(torch.nn.Module):
    """Registers exactly the trainable parameters, so DDP syncs them and nothing else; forward = task loss."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = [task]  # a list keeps the task's frozen modules out of this module's registry
        self.trainable = torch.nn.ParameterList([p for _, p in task.named_trainable()])

    def forward(self, inputs: dict[str, torch.Tensor], drop: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.task[0].loss(inputs, drop, generator)


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops (weights stay consistent)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _make_accelerator(config: LoopConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import ProjectConfiguration

    state = PartialState() if PartialState._shared_state else None
    if state is None or state.num_processes == 1:
        AcceleratorState._reset_state()  # single process: let each train() call pick its own precision
    cpu = config.device == "cpu" or (config.device is None and not torch.cuda.is_available())
    if config.device not in (None, "cpu") and not str(config.device).startswith("cuda"):
        raise FeatinvError(f"device {config.device!r} unsupported for training; use cpu or cuda "
                           "(several GPUs: `accelerate launch -m featinv train ...`)")
    if config.device is not None:
        from featinv.validation import check_device

        check_device(config.device)  # "cuda" on a machine without a GPU would silently train on the CPU
    if config.mixed_precision == "fp16" and cpu:
        raise FeatinvError("fp16 mixed precision needs a GPU; use --mixed-precision bf16 or no on a CPU")
    log_with = None
    if config.tracker == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise FeatinvError("TensorBoard logging needs the tensorboard package; pip install tensorboard") from None
        log_with = "tensorboard"
    try:
        return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision, log_with=log_with,
                           project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    except ValueError as exc:
        raise FeatinvError(f"cannot set up training ({exc}); check --device / --mixed-precision") from None


def _lr_lambda(config: LoopConfig, total_steps: int) -> Callable[[int], float]:
    warmup = max(0, int(config.warmup_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def _resume_fingerprint(config: LoopConfig, task: Task, schedule: Schedule) -> dict[str, Any]:
    """Settings that fix the data order and the model; a resumed run must match them."""
    return {"kind": task.kind, "seed": config.seed, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
            "world_size": schedule.world_size, "n_samples": schedule.n, **task.describe()}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a crash
    write_text(path, "".join(k + "\n" for k in kept))


def _save_grid(rows: Sequence[torch.Tensor], path: Path) -> None:
    """Rows of [n,3,R,R] images in [0,1] -> one PNG (atomic)."""
    n = max(len(r) for r in rows)
    size = rows[0].shape[-1]
    grid = Image.new("RGB", (n * (size + 2), len(rows) * (size + 2)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = to_pil(img)
            if tile.size[0] != size:
                tile = tile.resize((size, size), Image.BILINEAR)
            grid.paste(tile, (c * (size + 2), r * (size + 2)))
    scale = max(1, 96 // size)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def run_training(config: LoopConfig, make_task: Callable[[Any], Task], on_step: StepCallback | None = None) -> Path:
    """The shared loop. ``make_task(accelerator)`` builds the model + data once devices are known."""
    config.check()
    out = ensure_output_dir(config.out)
    accelerator = _make_accelerator(config, out)
    device = accelerator.device
    if device.type == "cuda" and config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    is_main = accelerator.is_main_process
    say = accelerator.print if config.progress else (lambda *a, **k: None)

    ckpt_root = out / CHECKPOINT_DIR
    existing = latest_checkpoint(ckpt_root)
    if existing is not None and not config.resume:
        raise FeatinvError(f"{out} already holds a training run (checkpoint {existing.name}); pass --resume to "
                           "continue it or choose a new --out folder")

    task = make_task(accelerator)
    task.dataset()[(0, config.seed)]  # decode one sample now: data that cannot be decoded fails before any write
    schedule = Schedule(n=len(task.dataset()), batch_size=config.batch_size,
                        world_size=accelerator.num_processes, grad_accum=config.grad_accum)
    total_steps = schedule.total_steps(config.epochs, config.max_steps)
    fingerprint = _resume_fingerprint(config, task, schedule)
    named = task.named_trainable()
    params = [p for _, p in named]
    if config.gradient_checkpointing:
        task.enable_gradient_checkpointing()

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))
    loss_module = _LossModule(task)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)

    start_step = 0
    if existing is not None:
        ckpt = load_checkpoint(existing)
        stored = ckpt.state.get("fingerprint", {})
        changed = sorted(k for k in fingerprint.keys() | stored.keys() if stored.get(k) != fingerprint.get(k))
        if changed:
            raise FeatinvError(f"cannot resume from {existing}: settings changed ({', '.join(changed)}); use the "
                               "original settings or a new --out folder")
        load_parameter_state(named, ckpt.params)
        optimizer.load_state_dict(ckpt.optimizer)
        scheduler.load_state_dict(ckpt.scheduler)
        if ckpt.scaler is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(ckpt.scaler)
        if len(ckpt.rng) > accelerator.process_index:
            restore_rng(ckpt.rng[accelerator.process_index])
        start_step = ckpt.step
        if is_main:
            _truncate_metrics(out / METRICS_FILE, start_step)
        say(f"resuming from {existing} (step {start_step}/{total_steps})")
    elif config.resume:
        say(f"no checkpoint in {out}; starting a new run")
    if existing is None and is_main:  # lines of an attempt killed before its first checkpoint would repeat
        _truncate_metrics(out / METRICS_FILE, 0)
    say(f"training {task.summary()}; {total_steps} steps of {schedule.samples_per_step} samples "
        f"({schedule.steps_per_epoch} steps/epoch) on {accelerator.num_processes} x {device}")

    if is_main:
        write_json(out / CONFIG_FILE, config.to_json())
    if config.tracker and is_main:
        accelerator.init_trackers("featinv", config={k: v for k, v in config.to_json().items()
                                                     if isinstance(v, (int, float, str, bool))})

    sampler = ShardedBatches(schedule, seed=config.seed, rank=accelerator.process_index, start_step=start_step,
                             total_steps=total_steps)
    dataset = task.dataset()
    workers = 0 if isinstance(dataset, TensorSamples) else config.num_workers
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=False)

    def write_state(status: str, step: int, extra: dict[str, Any] | None = None) -> None:
        if is_main:
            write_json(out / STATE_FILE, {"status": status, "step": step, "total_steps": total_steps,
                                          "kind": task.kind, **(extra or {})})

    last_saved = {"step": start_step if existing is not None else -1}

    def checkpoint(step: int) -> Path | None:
        from accelerate.utils import gather_object

        rng = gather_object([capture_rng()]) if accelerator.num_processes > 1 else [capture_rng()]
        path = None
        if is_main:
            path = save_checkpoint(
                ckpt_root, step, parameter_state(named), {"fingerprint": fingerprint, "total_steps": total_steps,
                                                         "epoch": step // schedule.steps_per_epoch},
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                rng=rng, keep=config.keep_checkpoints)
            write_state("running", step, {"checkpoint": str(path)})
        accelerator.wait_for_everyone()
        last_saved["step"] = step
        return path

    def validate(step: int) -> None:
        if not is_main:
            return
        task.train_mode(False)
        reference, generated = task.validation_images(config.num_val_images)
        task.train_mode(True)
        _save_grid([reference, generated], out / VALIDATION_DIR / f"step-{step:08d}.png")

    def log(record: dict[str, Any]) -> None:
        if not is_main:
            return
        with open(out / METRICS_FILE, "a", encoding="utf-8") as handle:  # append-only log; truncated on resume
            handle.write(json.dumps(record) + "\n")
        if config.tracker:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    from rich.progress import TextColumn

    from featinv.progress import make_progress

    bar = make_progress(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} samples/s"))
    show = config.progress and is_main
    task.train_mode(True)
    step = start_step
    updating = {"now": False}
    batches = iter(loader)
    window_loss: list[float] = []
    window_start = time.perf_counter()
    window_samples = 0
    try:
        with _StopRequest() as stop, (bar if show else contextlib.nullcontext()):
            progress_task = bar.add_task("training", total=total_steps, completed=start_step, loss="-", speed="-")
            while step < total_steps:
                step_loss = torch.zeros((), device=device)
                for micro in range(config.grad_accum):
                    batch = next(batches)
                    generator = torch.Generator().manual_seed(mix_seed(config.seed, step, micro, accelerator.process_index))
                    inputs = task.inputs(batch, device)
                    n = len(next(iter(inputs.values())))
                    drop = conditioning_drop(n, config.drop_prob, generator)
                    sync = micro == config.grad_accum - 1
                    with (contextlib.nullcontext() if sync else accelerator.no_sync(loss_module)), accelerator.autocast():
                        loss = loss_module(inputs, drop.to(device), generator) / config.grad_accum
                    accelerator.backward(loss)
                    step_loss += loss.detach().float()
                    window_samples += n * accelerator.num_processes
                # one small all-reduce: mean loss over processes, and whether any process was asked to stop
                flags = torch.stack([step_loss, torch.tensor(float(stop.signal is not None), device=device)])
                flags = accelerator.reduce(flags, reduction="sum") if accelerator.num_processes > 1 else flags
                loss_value = float(flags[0]) / accelerator.num_processes
                if not math.isfinite(loss_value):
                    optimizer.zero_grad(set_to_none=True)
                    good = latest_checkpoint(ckpt_root)
                    write_state("failed", step, {"error": f"loss {loss_value}"})
                    where = f"last good checkpoint: {good}" if good else "no checkpoint was written yet"
                    raise FeatinvError(f"training loss became {loss_value} at step {step + 1} ({where}); lower --lr, "
                                       "use --mixed-precision bf16 or no, then --resume")
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                updating["now"] = True
                optimizer.step()
                if not getattr(optimizer, "step_was_skipped", False):
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                updating["now"] = False
                window_loss.append(loss_value)

                if step % config.log_every == 0 or step == total_steps:
                    elapsed = max(1e-9, time.perf_counter() - window_start)
                    speed = window_samples / elapsed
                    record = {"step": step, "epoch": round(step / schedule.steps_per_epoch, 4),
                              "loss": sum(window_loss) / len(window_loss), "lr": scheduler.get_last_lr()[0],
                              "samples_per_s": round(speed, 3), "time": time.time()}
                    if device.type == "cuda":
                        record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                    log(record)
                    bar.update(progress_task, loss=f"{record['loss']:.4f}", speed=f"{speed:.1f}")
                    window_loss, window_samples, window_start = [], 0, time.perf_counter()
                if show:
                    bar.update(progress_task, completed=step)
                if on_step is not None:
                    on_step(step, loss_value)
                if config.validate_every and step % config.validate_every == 0 and step < total_steps:
                    validate(step)
                if step % config.checkpoint_every == 0 and step < total_steps:
                    checkpoint(step)
                # one process: stop at once; several: stop when the (all-reduced) flag says so, all together
                if (stop.signal is not None) if accelerator.num_processes == 1 else float(flags[1]) > 0:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if updating["now"]:  # a second Ctrl-C inside the optimizer update: the weights are half-updated
            accelerator.print(f"stopped during an update; the last checkpoint is in {ckpt_root}")
            _finish(accelerator, config)
            raise
        # finish cleanly: the weights are those after a whole step, so checkpoint + model agree with `step`
        if last_saved["step"] != step:
            checkpoint(step)
        if is_main:
            task.save(out)
        write_state("interrupted", step, {"checkpoint": str(latest_checkpoint(ckpt_root))})
        accelerator.print(f"interrupted at step {step}/{total_steps}; checkpoint and model saved in {out}; "
                          "continue with --resume")
        _finish(accelerator, config)
        raise
    except BaseException:
        _finish(accelerator, config)
        raise

    if last_saved["step"] != step:
        checkpoint(step)
    if is_main:
        task.save(out)
        validate(step)
    write_state("complete", step, {"checkpoint": str(latest_checkpoint(ckpt_root))})
    accelerator.wait_for_everyone()
    _finish(accelerator, config)
    say(f"done: {step} steps; model saved in {out}")
    return out


def _finish(accelerator: Any, config: LoopConfig) -> None:
    if config.tracker and accelerator.is_main_process:
        accelerator.end_training()


# -------------------------------------------------------------------------------------- public API
def train(config: TrainConfig, on_step: StepCallback | None = None) -> Path:
    """Train FeatInv (ControlNet + feature encoder on a frozen base); returns the run folder.

    The folder is loadable with ``FeatInv.from_pretrained(out)`` and holds ``checkpoints/``,
    ``metrics.jsonl``, ``validation/*.png`` and ``train_state.json``. ``on_step(step, loss)`` is called
    after every optimizer step (notebooks, tests).
    """
    if not isinstance(config, TrainConfig):
        raise FeatinvError(f"train() takes a TrainConfig, got {type(config).__name__}; use featinv.TrainConfig(...)")

    def make(accelerator: Any) -> Task:
        return FeatInvTask(config, accelerator.device, accelerator.is_main_process, accelerator.wait_for_everyone)

    return run_training(config, make, on_step=on_step)


def train_base(config: BaseTrainConfig, on_step: StepCallback | None = None) -> Path:
    """Train a small pixel-space diffusion base; the folder loads as ``pixel:OUT``."""
    if not isinstance(config, BaseTrainConfig):
        raise FeatinvError(f"train_base() takes a BaseTrainConfig, got {type(config).__name__}")
    return run_training(config, lambda accelerator: PixelBaseTask(config, accelerator.device), on_step=on_step)


def training_status(out: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``train_state.json`` says about a run folder (status, step, checkpoint)."""
    return read_json(Path(out) / STATE_FILE, what="training state")


__all__ = ["BaseTrainConfig", "LoopConfig", "TrainConfig", "TrainingImages", "sample_base", "train", "train_base",
           "training_status"]
