"""FeatInv: backbone + frozen diffusion base + feature-conditioned ControlNet, as one self-describing run.

A run folder holds ``config.json`` (backbone spec/layer/weights/input size with its channels and grid,
the base spec and shape, pooled, encoder, guidance) and ``controlnet/`` (ControlNet + encoder weights,
checksummed). :meth:`FeatInv.from_pretrained` rebuilds everything from it and refuses a backbone or base
whose shapes do not match what the ControlNet was trained on. It is just over 400 lines because the run
format's load/save/check and sampling are the one class users hold; the loop itself lives in the sampler.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from featinv.diffusion.bases import DiffusionBase, load_base
from featinv.diffusion.consistency import FeatureConsistency
from featinv.diffusion.controlnet import ControlScales, FeatInvControlNet, controlled_unet
from featinv.diffusion.draws import BatchDraws
from featinv.diffusion.encoders import build_encoder
from featinv.diffusion.guidance import FeatureGuidance, GuidanceTarget, fidelity_scores
from featinv.diffusion.run_config import FORMAT, FORMAT_VERSION, check_run_config
from featinv.diffusion.sampler import denoise
from featinv.errors import FeatinvError
from featinv.io import ensure_output_dir, read_json, write_json
from featinv.report.notebook import GridDisplay, Panel
from featinv.validation import (
    check_count,
    check_finite,
    check_guidance,
    check_images,
    check_seeds,
    check_steps,
)

CONFIG_NAME = "config.json"
#: optional per-position norms of the training feature maps, read with the run (out-of-distribution checks)
FEATURE_NORMS_FILE = "feature_norms.json"
CONTROLNET_DIR = "controlnet"
DEFAULT_GUIDANCE = {False: 1.75, True: 8.0}  # paper / official code: unpooled 1.75, pooled 8
#: what to check when sampling yields NaN or flat images (see :func:`~featinv.validation.check_images`)
_BROKEN_OUTPUT_FIX = ("check the run's weights (restore or retrain them), the guidance scale (e.g. 1.75) and the feature "
                      "maps (finite, of the size the backbone gives)")
_BASE_KEYS = ("latent_channels", "latent_size", "first_block_width", "cross_attention_dim")


@dataclass
class Reconstruction(GridDisplay):
    """Sampled images for a batch of feature maps (in Jupyter: a grid captioned with seed and cosine)."""

    images: torch.Tensor           # [N, 3, R, R] in [0, 1] at the base resolution
    seeds: list[int]
    features: torch.Tensor         # the conditioning maps used, [N, C, h, w]
    meta: dict[str, Any] = field(default_factory=dict)
    #: each image's cosine to its conditioning map as the backbone sees it (median over positions; pooled
    #: runs: of the pooled vectors), ``[N]``; None when not computed
    fidelity: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def display_rows(self) -> list[list[Panel]]:
        """One row: every image, captioned with its seed and (when computed) its cosine to its map."""
        from featinv.data import to_uint8

        cosines = [""] * len(self) if self.fidelity is None else [f" cos {float(c):.2f}" for c in self.fidelity]
        return [[(f"seed {seed}{cos}", to_uint8(image)) for seed, cos, image in zip(self.seeds, cosines, self.images,
                                                                                    strict=True)]]

    def resized(self, size: tuple[int, int] | int) -> torch.Tensor:
        """Bilinear resize to e.g. the backbone's input size (the paper's last pipeline step)."""
        if isinstance(size, int):
            size = (size, size)
        if tuple(self.images.shape[-2:]) == tuple(size):
            return self.images
        return F.interpolate(self.images, size=tuple(size), mode="bilinear", align_corners=False,
                             antialias=True).clamp(0.0, 1.0)


def _backbone_entry(bb: Any, weights: str) -> dict[str, Any]:
    info = bb.info
    if weights not in ("pretrained", "none") and Path(weights).exists():
        weights = str(Path(weights).resolve())
    entry = {"spec": bb.spec, "layer": bb.layer, "weights": weights, "input_size": list(info.input_size),
             "channels": int(info.channels), "grid": list(info.grid)}
    if getattr(bb, "overrides", None):  # a user-given mean/std, so the run rebuilds the same preprocessing
        entry["preprocessing"] = dict(bb.overrides)
    return entry


def _check_backbone(bb: Any, expected: dict[str, Any], run: str) -> None:
    info = bb.info
    got = {"channels": int(info.channels), "grid": list(info.grid)}
    want = {"channels": int(expected["channels"]), "grid": list(expected["grid"])}
    if got != want:
        raise FeatinvError(
            f"backbone {bb.spec} layer {bb.layer} gives {got['channels']} channels on a {tuple(got['grid'])} grid, "
            f"but run {run} was trained on {expected['spec']} layer {expected['layer']} with {want['channels']} "
            f"channels on a {tuple(want['grid'])} grid; use the run's backbone, layer and input size")


def _check_base(base: DiffusionBase, expected: dict[str, Any], run: str) -> None:
    got = base.describe()
    bad = [k for k in _BASE_KEYS if k in expected and int(expected[k]) != int(got[k])]
    if bad:
        detail = ", ".join(f"{k} {got[k]} != {expected[k]}" for k in bad)
        raise FeatinvError(f"diffusion base {base.spec} does not match run {run} ({detail}); "
                           f"use the base the run was trained on ({expected.get('spec')})")


class FeatInv:
    """Maps a classifier's feature maps back to images with a ControlNet-steered frozen diffusion base."""

    def __init__(self, backbone: Any, base: DiffusionBase, controlnet: FeatInvControlNet, pooled: bool = False,
                 guidance_scale: float | None = None, config: dict[str, Any] | None = None) -> None:
        self.backbone = backbone
        self.base = base
        self.controlnet = controlnet
        self.pooled = bool(pooled)
        self.guidance_scale = float(guidance_scale if guidance_scale is not None else DEFAULT_GUIDANCE[self.pooled])
        self.device = base.device
        self.optimizations: dict[str, Any] = {"channels_last": False, "compile": False, "compile_mode": None}
        self.config: dict[str, Any] = config or {}
        self.feature_norms: Any = None  # set from feature_norms.json when a run folder has one
        self.config.update({
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "pooled": self.pooled, "guidance_scale": self.guidance_scale,
            "encoder": controlnet.encoder.encoder_name or type(controlnet.encoder).__name__,
            "base": base.describe(),
        })
        self.config.setdefault("backbone", _backbone_entry(backbone, str(getattr(backbone, "weights", "pretrained"))))
        self.controlnet.to(self.device)
        self.backbone.to(self.device)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def create(cls, backbone: Any, base: str | DiffusionBase, layer: str | None = None, pooled: bool = False,
               encoder: str = "conv", encoder_kwargs: dict[str, Any] | None = None,
               backbone_weights: str = "pretrained", input_size: int | None = None,
               device: str | torch.device = "cpu", guidance_scale: float | None = None,
               resolution: int | None = None) -> FeatInv:
        """A fresh model: ControlNet copied from the base UNet, encoder zero-initialised (changes nothing yet).

        ``resolution`` sets the base's image size (checked against its configs; see ``bases.check_resolution``).
        """
        from featinv.features.backbone import backbone as make_backbone

        if isinstance(backbone, str):
            bb = make_backbone(backbone, layer=layer, weights=backbone_weights, input_size=input_size, device=device)
        else:
            bb = backbone
            backbone_weights = getattr(bb, "weights", backbone_weights)
        base = load_base(base, device=device, resolution=resolution)
        grid = (base.latent_size, base.latent_size)
        enc = build_encoder(encoder, bb.info.channels, base.first_block_width, grid, **(encoder_kwargs or {}))
        controlnet = FeatInvControlNet.from_unet_and_encoder(base.unet, enc)
        config = {"backbone": _backbone_entry(bb, str(backbone_weights)), "base": {"spec": base.spec}}
        return cls(bb, base, controlnet, pooled=pooled, guidance_scale=guidance_scale, config=config)

    @classmethod
    def from_pretrained(cls, run_dir: str | os.PathLike[str], device: str | torch.device = "cpu",
                        backbone: Any | None = None, base: str | DiffusionBase | None = None,
                        weights: bool = True) -> FeatInv:
        """Rebuild a saved run; ``backbone``/``base`` override the recorded ones but must match their shapes.

        ``weights=False`` builds the run's architecture without reading its ControlNet or backbone weights
        (random values; nothing downloaded): what a dry run needs for shapes and FLOPs."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FeatinvError(f"run folder {run_dir} does not exist; pass a folder written by `featinv train`")
        config = check_run_config(read_json(run_dir / CONFIG_NAME, what="FeatInv run config"), run_dir / CONFIG_NAME)
        entry = config["backbone"]
        if backbone is None:
            from featinv.features.backbone import backbone as make_backbone

            size = entry.get("input_size")
            backbone = make_backbone(entry["spec"], layer=entry["layer"],
                                     weights=entry.get("weights", "pretrained") if weights else "none",
                                     input_size=int(size[0]) if size else None, device=device,
                                     **entry.get("preprocessing", {}))
        _check_backbone(backbone, entry, str(run_dir))
        base_obj = load_base(base if base is not None else config["base"]["spec"], device=device,
                             resolution=config["base"].get("resolution"))
        _check_base(base_obj, config["base"], str(run_dir))
        controlnet = FeatInvControlNet.from_pretrained(run_dir / CONTROLNET_DIR, weights=weights)
        if int(controlnet.encoder.config.in_channels) != int(entry["channels"]):
            raise FeatinvError(f"encoder in {run_dir} expects {controlnet.encoder.config.in_channels} channels but the "
                               f"run config says {entry['channels']}; the run folder is inconsistent, retrain it")
        model = cls(backbone, base_obj, controlnet, pooled=config.get("pooled", False),
                    guidance_scale=config.get("guidance_scale"), config=config)
        if (run_dir / FEATURE_NORMS_FILE).is_file():
            model.feature_norms = read_json(run_dir / FEATURE_NORMS_FILE, what="training feature norms")
        return model

    def save_pretrained(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write ``controlnet/`` (atomically, as a whole) and then ``config.json``."""
        if not self.base.reloadable:
            raise FeatinvError(f"the diffusion base {self.base.spec} was never saved, so the run could not be loaded "
                               "again; save it first with base.save_pretrained(DIR)")
        run_dir = ensure_output_dir(run_dir)
        self.config["base"] = self.base.describe()  # the base may have been saved (and named) since
        self.controlnet.save_pretrained(run_dir / CONTROLNET_DIR)
        write_json(run_dir / CONFIG_NAME, self.config)
        return run_dir

    def to(self, device: str | torch.device) -> FeatInv:
        """Move the base, the ControlNet and the backbone to ``device``; returns self."""
        self.device = torch.device(device)
        self.base.to(self.device)
        self.controlnet.to(self.device)
        self.backbone.to(self.device)
        return self

    def optimize(self, channels_last: bool = True, compile: bool = False, compile_mode: str | None = None) -> FeatInv:
        """Opt-in GPU speed settings; nothing changes unless called (defaults keep CPU numerics exact).

        ``channels_last`` stores the conv weights of the UNet, ControlNet, VAE and backbone as NHWC, the
        layout cuDNN's tensor-core convolutions and GroupNorm prefer (activations follow the weights).
        ``compile`` compiles the UNet and ControlNet forwards in place (``nn.Module.compile``, so weights,
        ``state_dict`` keys and saving are untouched); it pays for long sampling or training runs, while the
        first call takes minutes. The backbone is never compiled: its feature hooks stop the forward early.
        """
        modules = [*self.base.modules(), self.controlnet]
        if channels_last:
            for module in [*modules, self.backbone.model]:
                module.to(memory_format=torch.channels_last)
        if compile:
            for module in (self.base.unet, self.controlnet):
                module.compile(mode=compile_mode)
        self.optimizations = {"channels_last": bool(channels_last), "compile": bool(compile),
                              "compile_mode": compile_mode}
        return self

    def sampling_defaults(self) -> FeatInv:
        """The sampler's GPU defaults, applied by :func:`load_model` (``reconstruct``, ``eval``, analyses): on CUDA
        every network NHWC and the denoiser (UNet + ControlNet, 98% of a reconstruction's FLOPs) stored in bf16,
        so no weight is cast per step; the VAE and the backbone keep fp32 weights, so what ``eval`` measures is
        not rounded. On any other device nothing changes (CPU results stay bit for bit). Compilation stays
        opt-in (:meth:`optimize`): its warm-up takes minutes."""
        if self.device.type != "cuda":
            return self
        self.optimize(channels_last=True)
        for module in (self.base.unet, self.controlnet):
            module.to(torch.bfloat16)
        self.optimizations["bf16_denoiser"] = True
        return self

    def __repr__(self) -> str:
        entry = self.config["backbone"]
        return (f"FeatInv(backbone={entry['spec']}@{entry['layer']}, base={self.base.spec}, pooled={self.pooled}, "
                f"encoder={self.config['encoder']}, guidance={self.guidance_scale})")

    # ---- features ------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The ControlNet and its encoder; the base and the backbone stay locked."""
        self.controlnet.train()
        self.controlnet.requires_grad_(True)
        return list(self.controlnet.parameters())

    @torch.no_grad()  # not inference_mode: the trainer feeds these maps into a graph with gradients
    def features(self, images: Any) -> torch.Tensor:
        """Backbone feature maps for images of any kind :meth:`Backbone.preprocess` takes (PIL, numpy arrays,
        ``[B,3,H,W]`` tensors in [0,1], paths, lists of these); pooled if this is a pooled run."""
        x = self.backbone.preprocess(images).to(self.device)
        return self.backbone.features(x, pooled=self.pooled)

    def _conditioning(self, features: torch.Tensor) -> torch.Tensor:
        entry = self.config["backbone"]
        if features.ndim == 2:  # a pooled vector: copy it to every position
            features = features[:, :, None, None].expand(-1, -1, *entry["grid"])
        if features.ndim != 4 or features.shape[1] != int(entry["channels"]):
            raise FeatinvError(f"features must be [N,{entry['channels']},h,w] from {entry['spec']} layer {entry['layer']}, "
                               f"got shape {tuple(features.shape)}; compute them with model.features(images)")
        features = features.to(self.device, torch.float32)
        check_finite(features, "features", "check the backbone weights and the input images (or the edit applied "
                     "to the map)")
        if self.pooled:  # idempotent for maps that are already pooled
            features = features.mean(dim=(2, 3), keepdim=True).expand_as(features)
        return features

    # ---- training ------------------------------------------------------------------------------
    def training_loss(self, features: torch.Tensor, images01: torch.Tensor, drop: torch.Tensor,
                      generator: torch.Generator | BatchDraws | None = None,
                      consistency: FeatureConsistency | None = None,
                      moments: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-prediction (or v) MSE of the ControlNet-steered UNet.

        ``drop[i]`` zeroes sample i's feature map and empties its prompt (the paper drops 15%), which
        teaches the unconditional branch used by classifier-free guidance. An active ``consistency`` adds
        the feature-consistency term (:mod:`featinv.diffusion.consistency`); without it the loss is the paper's.
        ``moments`` (``base.encode_moments(images01)``, cached by ``--cache-latents``) skips the VAE encoder;
        the latent is then drawn from them with the same generator, so the loss is the one without a cache.
        ``generator``: a torch generator, or :class:`~featinv.diffusion.draws.BatchDraws` for one process's rows
        of a micro-batch shared by several processes.
        """
        base = self.base
        draws = BatchDraws.of(generator)
        drop = torch.as_tensor(drop, dtype=torch.bool, device=self.device).reshape(-1)
        features = self._conditioning(features) * (~drop).to(torch.float32)[:, None, None, None]
        with torch.no_grad():
            latents = (base.encode(images01, generator=draws) if moments is None
                       else base.sample_latents(moments.to(self.device), generator=draws))
        scheduler = base.make_scheduler("ddpm")
        noise = draws.randn(latents.shape).to(self.device)
        t = draws.randint(base.num_train_timesteps, latents.shape[0]).to(self.device)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = controlled_unet(base.unet, self.controlnet, noisy, t, base.prompt_embeddings(drop), features)
        target = noise if base.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        loss = F.mse_loss(pred.float(), target.float())
        if consistency is None or not consistency.active:
            return loss
        seen = GuidanceTarget(self.backbone, features, base.decode, self.pooled)
        return loss + consistency.loss(seen, scheduler, noisy, pred, t, drop, draws)

    # ---- sampling ------------------------------------------------------------------------------
    def reconstruct(self, features: torch.Tensor | None = None, images: Any = None, seeds: Any = (0,),
                    guidance_scale: float | None = None, steps: int = 50, scheduler: str = "ddim",
                    batch_size: int | str = 16, progress: bool = True, bf16: bool = False,
                    feature_guidance: FeatureGuidance | float = 0.0, fidelity: bool = True,
                    control_strength: float = 1.0, guess_mode: bool = False) -> Reconstruction:
        """Sample images whose features should match ``features`` (or those of ``images``: PIL images, numpy
        arrays, tensors or paths, see :meth:`Backbone.preprocess`).

        One seed per sample (or one seed for all); a sample's image depends only on its own features
        and seed, never on the rest of its batch. Images come out at the base resolution; use
        :meth:`Reconstruction.resized` for the backbone's input size. ``feature_guidance`` (a strength or
        a :class:`~featinv.diffusion.guidance.FeatureGuidance`) steers sampling toward the target features;
        0 is the paper's sampler, bit for bit. ``fidelity`` scores each output against its map (one
        backbone pass) into :attr:`Reconstruction.fidelity`. ``batch_size="auto"`` takes the largest batch
        that fits the free GPU memory (:func:`~featinv.diffusion.memory.fitting_batch_size`; 16 on a CPU). ``control_strength``
        (a scale on every ControlNet residual) and ``guess_mode`` (no features in the unconditional branch,
        residual scales 0.825^(12-i)) are the authors' sampler controls; 1.0 and off are the paper's sampler.
        """
        if (features is None) == (images is None):
            raise FeatinvError("pass exactly one of features= or images= to reconstruct")
        check_steps(steps, limit=self.base.num_train_timesteps)
        if batch_size != "auto":
            check_count(batch_size, "batch size")
        steering = FeatureGuidance.of(feature_guidance)
        control = ControlScales(control_strength, bool(guess_mode))
        if features is None:
            features = self.features(images)
        features = self._conditioning(torch.as_tensor(features))
        n = features.shape[0]
        seeds = check_seeds(seeds)
        if len(seeds) == 1:
            seeds = seeds * n
        if len(seeds) != n:
            raise FeatinvError(f"got {len(seeds)} seeds for {n} feature maps; pass one seed per map or a single seed")
        guidance = self.guidance_scale if guidance_scale is None else check_guidance(guidance_scale)
        if batch_size == "auto":
            from featinv.diffusion.memory import fitting_batch_size

            batch_size = fitting_batch_size(self, n if self.device.type == "cuda" else 16, guidance)
        sampler = self.base.make_scheduler(scheduler)
        latent_shape = (self.base.latent_channels, self.base.latent_size, self.base.latent_size)
        chunks = range(0, n, batch_size)
        self.controlnet.eval()
        outputs, scores = [], []
        with _sampling_mode(steering.active), _steps_bar(len(chunks) * steps, progress) as advance:
            for start in chunks:
                # a clone is an ordinary tensor even if the caller's maps were made in inference mode
                feats = features[start:start + batch_size].clone() if steering.active else features[start:start + batch_size]
                b = feats.shape[0]
                cond = self.base.prompt_embeddings(torch.zeros(b, dtype=torch.bool))
                uncond = self.base.prompt_embeddings(torch.ones(b, dtype=torch.bool))
                target = GuidanceTarget(self.backbone, feats, self.base.decode, self.pooled) if steering.active else None
                latents = denoise(self.base.unet, self.controlnet, sampler, feats, cond, uncond,
                                  seeds[start:start + b], latent_shape, steps=steps, guidance_scale=guidance,
                                  bf16=bf16, on_step=advance, feature_guidance=steering, target=target,
                                  control=control)
                decoded = self.base.decode(latents)
                check_images(decoded, seeds[start:start + b], _BROKEN_OUTPUT_FIX)
                if fidelity:
                    scores.append(fidelity_scores(self.backbone, decoded, feats, self.pooled))
                outputs.append(decoded.cpu())
        return Reconstruction(images=torch.cat(outputs), seeds=seeds, features=features.cpu(),
                              meta={"guidance_scale": guidance, "steps": steps, "scheduler": scheduler,
                                    "feature_guidance": steering.describe(),
                                    **({} if control.is_default else control.describe())},
                              fidelity=torch.cat(scores) if fidelity else None)


def load_model(run: FeatInv | str | os.PathLike[str], device: str | torch.device = "cpu") -> FeatInv:
    """The one run loader: a FeatInv model given as an object (used as it is), or a run folder to load it from
    (with :meth:`FeatInv.sampling_defaults`: on CUDA, NHWC and a bf16 denoiser; elsewhere unchanged)."""
    if isinstance(run, (str, os.PathLike)):
        return FeatInv.from_pretrained(run, device=device).sampling_defaults()
    if not hasattr(run, "reconstruct") or not hasattr(run, "backbone"):
        raise FeatinvError(f"expected a FeatInv model or a run folder, got {type(run).__name__}; pass a run folder "
                           "written by `featinv train` (--run DIR) or featinv.FeatInv.from_pretrained(run_dir)")
    return run


@contextlib.contextmanager
def _sampling_mode(guided: bool) -> Iterator[None]:
    """inference_mode for the paper's sampler; guidance differentiates through the loop, which inference
    mode forbids (even a caller's), so it samples under plain no_grad and enables gradients where needed."""
    if not guided:
        with torch.inference_mode():
            yield
        return
    with torch.inference_mode(False), torch.no_grad():
        yield


@contextlib.contextmanager
def _steps_bar(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich bar over all denoising steps of all batches; yields the per-step ``advance`` callback."""
    if not enabled:
        yield lambda: None
        return
    from featinv.progress import make_progress

    with make_progress() as bar:
        task = bar.add_task("denoising", total=total)
        yield lambda: bar.advance(task)
