"""What the loop trains: a *task* supplies parameters, data, model inputs, the loss, validation and saving.

The loop (:mod:`featinv.training.loop`) knows nothing about ControlNets; :class:`FeatInvTask` trains FeatInv's
ControlNet + feature encoder on a frozen base and backbone (``featinv train``), :class:`PixelBaseTask` a small
pixel-space base from scratch (``featinv base train``). A new kind of model is one more class with the
:class:`Task` methods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from featinv.diffusion.draws import BatchDraws
from featinv.diffusion.sampler import denoise
from featinv.errors import FeatinvError
from featinv.training.config import BaseTrainConfig, TrainConfig, check_encoder_options
from featinv.training.data import AugmentedCrops, TensorSamples, load_training_images, mix_seed
from featinv.training.speed import SpeedSettings, compile_modules, to_channels_last
from featinv.validation import check_steps


class Task(Protocol):
    """What the loop needs from a model being trained (implemented for FeatInv and the pixel base)."""

    kind: str

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The parameters to optimise, with stable names for checkpoints."""

    def dataset(self) -> torch.utils.data.Dataset:
        """Samples indexed by ``(index, sample_seed)``."""

    def inputs(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Turn a collated batch into loss inputs (the batched backbone forward happens here)."""

    def loss(self, inputs: dict[str, torch.Tensor], drop: torch.Tensor, generator: BatchDraws) -> torch.Tensor:
        """The training objective for one micro-batch."""

    def train_mode(self, training: bool) -> None:
        """Switch the trainable modules between train and eval mode."""

    def enable_gradient_checkpointing(self) -> None:
        """Trade compute for memory in every module the gradient passes through."""

    def speed_up(self, speed: SpeedSettings) -> None:
        """Apply the run's GPU speed settings (layout, frozen precision, compilation) to the networks."""

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


class FeatInvTask(Task):
    """Train FeatInv's ControlNet + encoder; backbone and base stay frozen."""

    kind = "featinv"

    def __init__(self, config: TrainConfig, device: torch.device, is_main: bool = True,
                 wait: Callable[[], None] = lambda: None) -> None:
        self.config = config
        torch.manual_seed(config.seed)  # the encoder's random (non-zero) layers
        self.model = _create_model(config, device)
        self.device = device
        self.images = load_training_images(config.data, max_samples=config.max_samples, seed=config.seed)
        info = self.model.backbone.info
        self.view = config.features_from  # which view of each sample the backbone sees
        self.sizes = {"target": int(self.model.base.resolution)}
        if self.view == "crop":
            self.sizes["crop"] = int(info.input_size[0])
        if info.input_size[0] != info.input_size[1]:
            raise FeatinvError(f"training needs a square backbone input, got {info.input_size}; pass --input-size")
        self.consistency = config.consistency()
        self.consistency.check_timesteps(self.model.base.num_train_timesteps)
        check_steps(config.val_steps, limit=self.model.base.num_train_timesteps, name="val-steps")
        self._params = [(f"p{i:05d}", p) for i, p in enumerate(self.model.trainable_parameters())]
        self._names = self._parameter_names()
        self._cache: TensorSamples | None = None
        self.timings: dict[str, float] = {}  # seconds of one-off work (the cache build), for train_state.json
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
                "base": self.model.base.spec, "n": len(self.dataset()), **self._non_default_view(),
                **self._non_default_encoder(), **self._active_consistency(),
                **({"cache_latents": True} if self.config.cache_latents else {})}

    def _active_consistency(self) -> dict[str, Any]:
        """The consistency-loss settings for resume checks, all three when the term is on and none when it is
        off (weight 0: the other two change nothing), so runs written before the option existed still resume."""
        c = self.consistency
        return {"consistency_weight": c.weight, "consistency_max_t": c.max_t,
                "consistency_fraction": c.fraction} if c.active else {}

    def _non_default_encoder(self) -> dict[str, Any]:
        """The encoder and its options for resume checks, each left out when it is the default (conv, no
        options), so runs written before they were part of the check still resume."""
        c = self.config
        chosen: dict[str, Any] = {"encoder": c.encoder} if c.encoder != "conv" else {}
        return {**chosen, "encoder_options": dict(c.encoder_kwargs)} if c.encoder_kwargs else chosen

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
                   **self._non_default_view(), **({"latents": True} if c.cache_latents else {})}
        import hashlib

        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]

    def _build_cache(self, is_main: bool, wait: Callable[[], None]) -> TensorSamples:
        """Compute features + targets once (main process), save them, and train from memory afterwards."""
        from featinv.io import load_safetensors, save_safetensors
        from featinv.progress import progress

        c = self.config
        path = Path(c.out) / f"feature_cache-{self._cache_key()}.safetensors"
        start = time.perf_counter()
        if is_main and not path.is_file():
            views = max(1, int(c.cache_views))
            centre, augmented = self._crops(augment=False), self._crops(augment=True)
            keys = [(i, v) for v in range(views) for i in range(len(self.images))]
            cached: dict[str, list[torch.Tensor]] = {"features": [], "target": [], "moments": []}
            batch = max(1, c.batch_size * 4)
            chunks = [keys[s:s + batch] for s in range(0, len(keys), batch)]
            for chunk in progress(chunks, description="caching features", enabled=c.progress):
                items = [(centre if v == 0 else augmented)[(i, mix_seed(c.seed, 7919, v, i))] for i, v in chunk]
                crops = torch.stack([it[self.view] for it in items])
                cached["features"].append(self.features(_to_float01(crops, self.device)).cpu())
                cached["target"].append(torch.stack([it["target"] for it in items]))
                if c.cache_latents:  # the VAE encoder's deterministic part, once per fixed crop
                    target = _to_float01(cached["target"][-1], self.device)
                    cached["moments"].append(self.model.base.encode_moments(target).float().cpu())
            save_safetensors({name: torch.cat(parts) for name, parts in cached.items() if parts}, path)
            self.timings["cache_build_s"] = round(time.perf_counter() - start, 3)
        wait()
        return TensorSamples(load_safetensors(path))

    def dataset(self) -> torch.utils.data.Dataset:
        return self._cache if self._cache is not None else self._crops(augment=True)

    def inputs(self, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        target = _to_float01(batch["target"], device)
        moments = {"moments": batch["moments"].to(device, non_blocking=True)} if "moments" in batch else {}
        if "features" in batch:
            return {"features": batch["features"].to(device, non_blocking=True).float(), "target": target, **moments}
        return {"features": self.features(_to_float01(batch[self.view], device)), "target": target}

    def loss(self, inputs: dict[str, torch.Tensor], drop: torch.Tensor, generator: BatchDraws) -> torch.Tensor:
        return self.model.training_loss(inputs["features"], inputs["target"], drop, generator=generator,
                                        consistency=self.consistency, moments=inputs.get("moments"))

    def train_mode(self, training: bool) -> None:
        self.model.controlnet.train(training)

    def speed_up(self, speed: SpeedSettings) -> None:
        """Frozen UNet/VAE/backbone in the training precision (no per-step weight casts; the ControlNet keeps
        fp32 master weights), NHWC layout everywhere, and the denoiser + backbone compiled."""
        model = self.model
        frozen = [*model.base.modules(), model.backbone.model]
        if speed.frozen_dtype != torch.float32:
            for module in frozen:
                module.to(speed.frozen_dtype)
        if speed.channels_last:
            to_channels_last([*frozen, model.controlnet])
        if speed.compile:
            compile_modules([model.base.unet, model.controlnet, model.backbone.model], speed.compile_mode)
        model.optimizations = {"channels_last": speed.channels_last, "compile": speed.compile,
                               "compile_mode": speed.compile_mode}

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


def _create_model(config: TrainConfig, device: torch.device) -> Any:
    """A fresh FeatInv model; an encoder option its class does not take is named with the valid ones."""
    from featinv.diffusion.model import FeatInv

    try:
        return FeatInv.create(config.backbone, config.base, layer=config.layer, pooled=config.pooled,
                              encoder=config.encoder, encoder_kwargs=config.encoder_kwargs,
                              backbone_weights=config.backbone_weights, input_size=config.input_size, device=device,
                              resolution=config.resolution)
    except FeatinvError:
        # TrainConfig.check could not know the options if the encoder's factory imports its class only when
        # it builds one; it has now, so a bad option gets the one-line error listing the valid ones
        check_encoder_options(config.encoder, config.encoder_kwargs)
        raise


class PixelBaseTask(Task):
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

    def loss(self, inputs: dict[str, torch.Tensor], drop: torch.Tensor, generator: BatchDraws) -> torch.Tensor:
        return self.base.training_loss(inputs["target"], drop, generator=generator)

    def train_mode(self, training: bool) -> None:
        self.base.unet.train(training)

    def enable_gradient_checkpointing(self) -> None:
        self.base.unet.enable_gradient_checkpointing()

    def speed_up(self, speed: SpeedSettings) -> None:
        """NHWC layout and compilation of the UNet (all of it trains: there is no frozen network here)."""
        if speed.channels_last:
            to_channels_last([self.base.unet])
        if speed.compile:
            compile_modules([self.base.unet], speed.compile_mode)

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

