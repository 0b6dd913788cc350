"""Frozen diffusion bases: the model FeatInv's ControlNet steers.

``sd``    any diffusers Stable Diffusion 1.x/2.x folder or hub id (MiniSD is the paper's base: 256 px,
          latents 4×32×32). Prompt embeddings for the fixed prompt and the empty prompt are computed once.
``pixel`` a small pixel-space UNet without VAE or text encoder (a learned 2-entry table stands in for the
          two prompts) that trains on a CPU in minutes, for offline use and the demo.

Both expose the same interface (:class:`DiffusionBase`), so the ControlNet, trainer and sampler never
ask which one they have. (Over 400 lines, about 480: the contract and its two implementations share the
scheduler table and the prompt plumbing, and read best side by side; the plugins that register them live
in ``featinv/plugins/bases/``.)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)

from featinv.diffusion.draws import BatchDraws
from featinv.errors import FeatinvError, did_you_mean
from featinv.io import atomic_dir, load_safetensors, read_json, save_safetensors, write_json

PROMPT = "a high-quality, detailed, and professional image"
NEGATIVE_PROMPT = ""
PIXEL_MARKER = "featinv_base.json"
SCHEDULERS = ("ddim", "dpm++", "unipc", "ddpm")
_SCHEDULER_ALIASES = {"dpmsolver++": "dpm++", "dpm": "dpm++", "dpmpp": "dpm++", "uni_pc": "unipc"}


class DiffusionBase:
    """A frozen diffusion model: UNet (+ optional VAE), the two prompt embeddings and a noise schedule."""

    def __init__(self, spec: str, unet: UNet2DConditionModel, scheduler_config: dict[str, Any],
                 prompt_embeds: torch.Tensor, vae: AutoencoderKL | None = None, device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.unet = unet
        self.vae = vae
        self.scheduler_config = dict(scheduler_config)
        # row 0: the fixed prompt, row 1: the empty prompt; [2, L, D]
        self.prompt_embeds = prompt_embeds
        self.device = torch.device("cpu")
        self.freeze()
        self.to(device)

    # ---- description -------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Output image size in pixels (256 for MiniSD)."""
        return self.latent_size * self.vae_scale_factor

    @property
    def first_block_width(self) -> int:
        """Channels after ``conv_in``: the width the feature encoder must produce (320 for MiniSD)."""
        return int(self.unet.config.block_out_channels[0])

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def reloadable(self) -> bool:
        """Whether :func:`load_base` can load this base again from its ``spec`` (one built in memory cannot)."""
        return True

    def describe(self) -> dict[str, Any]:
        """Numbers a FeatInv run records so a mismatching base is refused on load."""
        return {"spec": self.spec, "resolution": self.resolution, "latent_channels": self.latent_channels,
                "latent_size": self.latent_size, "first_block_width": self.first_block_width,
                "cross_attention_dim": int(self.unet.config.cross_attention_dim),
                "prediction_type": self.prediction_type}

    # ---- state -------------------------------------------------------------------------------
    def modules(self) -> list[torch.nn.Module]:
        """The torch modules (UNet, and the VAE if any), to move and freeze them together."""
        return [m for m in (self.unet, self.vae) if m is not None]

    def freeze(self) -> DiffusionBase:
        """Lock every weight (the base is never trained together with a ControlNet)."""
        for module in self.modules():
            module.eval()
            module.requires_grad_(False)
        if isinstance(self.prompt_embeds, torch.nn.Parameter):
            self.prompt_embeds.requires_grad_(False)
        return self

    def to(self, device: str | torch.device) -> DiffusionBase:
        """Move every module of the base to ``device``; returns self."""
        self.device = torch.device(device)
        for module in self.modules():
            module.to(self.device)
        if isinstance(self.prompt_embeds, torch.nn.Parameter):
            self.prompt_embeds.data = self.prompt_embeds.data.to(self.device)
        else:
            self.prompt_embeds = self.prompt_embeds.to(self.device)
        return self

    # ---- schedules ---------------------------------------------------------------------------
    def make_scheduler(self, name: str = "ddim") -> Any:
        """A fresh diffusers scheduler on this base's noise schedule: ddim | dpm++ | unipc | ddpm (training)."""
        key = _SCHEDULER_ALIASES.get(name.lower(), name.lower())
        config = self.scheduler_config
        if key == "ddim":
            return DDIMScheduler.from_config(config)
        if key == "dpm++":
            return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
        if key == "unipc":
            return UniPCMultistepScheduler.from_config(config)
        if key == "ddpm":
            return DDPMScheduler.from_config(config)
        raise FeatinvError(f"unknown scheduler {name!r}: {did_you_mean(name, SCHEDULERS)}")

    # ---- images <-> model space ----------------------------------------------------------------
    def _at_resolution(self, images01: torch.Tensor) -> torch.Tensor:
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise FeatinvError(f"images must be [B,3,H,W] in [0,1], got shape {tuple(images01.shape)}")
        images01 = images01.to(self.device, torch.float32)
        if images01.shape[-2:] != (self.resolution, self.resolution):
            images01 = F.interpolate(images01, size=(self.resolution, self.resolution), mode="bilinear",
                                     align_corners=False, antialias=True)
        return images01

    def encode(self, images01: torch.Tensor, generator: torch.Generator | BatchDraws | None = None) -> torch.Tensor:
        """Images in [0,1] (resized to the base resolution) -> the space the UNet denoises."""
        return self.sample_latents(self.encode_moments(images01), generator)

    def encode_moments(self, images01: torch.Tensor) -> torch.Tensor:
        """The deterministic half of :meth:`encode`, which a latent cache keeps: the VAE's latent distribution
        (mean and log-variance, ``[B, 2C, h, w]``), or without a VAE the images in [-1, 1] themselves."""
        x = self._at_resolution(images01) * 2.0 - 1.0
        if self.vae is None:
            return x
        return self.vae.encode(x.to(self.vae.dtype)).latent_dist.parameters

    def sample_latents(self, moments: torch.Tensor, generator: torch.Generator | BatchDraws | None = None) -> torch.Tensor:
        """The random half of :meth:`encode`: one latent drawn from ``moments`` (the identity without a VAE).

        The draw is diffusers' ``DiagonalGaussianDistribution.sample`` (normal values drawn on the CPU in the
        moments' dtype), taken through :class:`BatchDraws` so a process's rows match one process's."""
        if self.vae is None:
            return moments
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        distribution = DiagonalGaussianDistribution(moments)
        noise = BatchDraws.of(generator).randn(distribution.mean.shape, dtype=moments.dtype).to(moments.device)
        latents = distribution.mean + distribution.std * noise
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor, chunk_size: int = 4) -> torch.Tensor:
        """UNet space -> images in [0,1]; the VAE runs in chunks to bound memory."""
        if self.vae is None:
            return (latents.float() / 2.0 + 0.5).clamp(0.0, 1.0)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        out = []
        for chunk in latents.split(max(1, chunk_size)):
            z = chunk.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
            out.append(self.vae.decode(z).sample.float())
        return (torch.cat(out) / 2.0 + 0.5).clamp(0.0, 1.0)

    def prompt_embeddings(self, drop: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]``: the fixed prompt where ``drop`` is False, the empty prompt where it is True."""
        drop = torch.as_tensor(drop, dtype=torch.bool, device=self.device).reshape(-1)
        return self.prompt_embeds[drop.long()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, resolution={self.resolution}, latent={self.latent_channels}x{self.latent_size}²)"


# ---- sd: diffusers Stable Diffusion folders and hub ids --------------------------------------------

def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with diffusers
        return False


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``org/name``; anything else with path syntax is meant as a folder."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def _load_sd_parts(source: str, kw: dict[str, Any]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
    scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **kw))
    return unet, vae, tokenizer, text_encoder, scheduler_config


class StableDiffusionBase(DiffusionBase):
    """A diffusers Stable Diffusion 1.x/2.x checkpoint (VAE, CLIP text encoder + tokenizer, UNet, schedule).

    Training and sampling need only the two fixed prompt embeddings, so the text encoder is dropped after
    load and read again from the same folder only when :meth:`encode_prompts` is asked for other prompts.
    """

    _text_source: tuple[str, dict[str, Any]] | None = None  # (folder or hub id, from_pretrained kwargs)
    _text_parts: tuple[Any, Any] | None = None  # (tokenizer, text encoder) while held

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP embeddings ``[N, L, D]`` of ``prompts``: the one prompt-embedding path of featinv.

        no_grad (not inference_mode) so training may reuse the fixed embeddings computed with it.
        """
        tokenizer, text_encoder = self._text_model()
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(text_encoder.device))[0].float()

    def _text_model(self) -> tuple[Any, Any]:
        """The tokenizer and text encoder, read again (offline-safe) from the base's source when dropped."""
        if self._text_parts is None:
            from transformers import CLIPTextModel, CLIPTokenizer

            if self._text_source is None:
                raise FeatinvError(f"{self.spec} was built without its text encoder; load it with load_base('sd:DIR')")
            source, kw = self._text_source
            try:
                tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
                text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
            except Exception as exc:  # transformers raises OSError/ValueError/... for a missing or partial folder
                raise FeatinvError(
                    f"cannot load the text encoder of {self.spec} ({type(exc).__name__}); encoding prompts needs a "
                    "Stable Diffusion folder with tokenizer/ and text_encoder/ (sd:DIR)"
                ) from None
            self._text_parts = (tokenizer, text_encoder.to(self.device).eval())
        return self._text_parts

    def to(self, device: str | torch.device) -> StableDiffusionBase:
        """Move the base (and the text encoder, while it is held) to ``device``; returns self."""
        super().to(device)
        if self._text_parts is not None:
            self._text_parts[1].to(self.device)
        return self

    @classmethod
    def load(cls, path_or_id: str, device: str | torch.device = "cpu") -> StableDiffusionBase:
        local = Path(path_or_id).expanduser()
        is_local = local.exists()
        if is_local:
            if not local.is_dir() or not ((local / "model_index.json").is_file() or (local / "unet").is_dir()):
                raise FeatinvError(f"{local} is not a diffusers Stable Diffusion folder (no model_index.json / unet/); "
                                   "pass a folder written by StableDiffusionPipeline.save_pretrained")
            source, local_only = str(local), True
        elif _looks_like_path(path_or_id):
            raise FeatinvError(f"diffusion base folder {path_or_id} does not exist; check the path")
        else:
            source, local_only = path_or_id, _hub_offline()
        kw = {"local_files_only": local_only}
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # featinv shows its own progress; no per-shard bars
        try:
            with warnings.catch_warnings():  # library deprecation chatter is not the user's business
                warnings.simplefilter("ignore")
                unet, vae, tokenizer, text_encoder, scheduler_config = _load_sd_parts(source, kw)
        except Exception as exc:  # hub/network/file errors come in many types; all mean "cannot load"
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            if is_local:
                raise FeatinvError(f"cannot load Stable Diffusion folder {local} ({reason}); it needs unet/, vae/, "
                                   "text_encoder/, tokenizer/ and scheduler/ as written by diffusers") from None
            raise FeatinvError(
                f"cannot load diffusion base {path_or_id!r} from the Hugging Face hub ({type(exc).__name__}: {reason}); "
                f"offline, download it once where there is network (huggingface-cli download {path_or_id} "
                f"--local-dir DIR) and pass sd:DIR, a local folder") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        spec = f"sd:{local.resolve()}" if is_local else f"sd:{path_or_id}"  # absolute: runs load from any cwd
        base = cls(spec, unet, scheduler_config, torch.empty(0), vae=vae)  # on the CPU, like the text encoder
        base._text_source = (source, kw)
        base._text_parts = (tokenizer, text_encoder.eval())
        base.prompt_embeds = base.encode_prompts([PROMPT, NEGATIVE_PROMPT])  # row 0 fixed, row 1 empty
        base._text_parts = None  # the two prompts are all training and sampling need; reread on demand
        return base.to(device)


# ---- pixel: a small pixel-space base trainable on a CPU --------------------------------------------

class PixelBase(DiffusionBase):
    """A small pixel-space UNet (no VAE, no text encoder); a learned 2-entry table replaces the prompts.

    Folder layout: ``featinv_base.json`` (written last), ``unet/`` (config + weights), ``prompts.safetensors``,
    ``scheduler/scheduler_config.json``.
    """

    @classmethod
    def create(cls, resolution: int = 32, widths: Sequence[int] = (32, 64, 64), layers_per_block: int = 1,
               cross_attention_dim: int = 32, prompt_tokens: int = 2, attention_head_dim: int = 8,
               beta_schedule: str = "squaredcos_cap_v2", prediction_type: str = "epsilon",
               num_train_timesteps: int = 1000, seed: int = 0, device: str | torch.device = "cpu") -> PixelBase:
        """A fresh, trainable base (train it with ``featinv base train``)."""
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2:
            raise FeatinvError(f"pixel base needs at least two block widths, got {widths}; e.g. widths=(32, 64, 64)")
        if min(widths) < attention_head_dim:
            raise FeatinvError(f"pixel base block widths {widths} must each be at least {attention_head_dim} (the "
                               "attention head size); e.g. widths=(32, 64, 64)")
        if resolution % (2 ** (len(widths) - 1)):
            raise FeatinvError(f"resolution {resolution} is not divisible by {2 ** (len(widths) - 1)} "
                               f"({len(widths)} blocks halve it); pick e.g. 32")
        groups = math.gcd(32, *widths)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=resolution, in_channels=3, out_channels=3, block_out_channels=widths,
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(widths) - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (len(widths) - 1) + ("UpBlock2D",),
            cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim, norm_num_groups=groups,
        )
        scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                  prediction_type=prediction_type, clip_sample=True, clip_sample_range=1.0)
        table = torch.nn.Parameter(torch.randn(2, prompt_tokens, cross_attention_dim) * 0.5)
        base = cls(f"pixel:{resolution}px", unet, json.loads(scheduler.to_json_string()), table, device=device)
        base.trainable_parameters()
        return base

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> PixelBase:
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise FeatinvError(f"pixel base folder {directory} does not exist; train one with `featinv base train`")
        meta = read_json(directory / PIXEL_MARKER, what="pixel base marker")
        if meta.get("kind") != "pixel":
            raise FeatinvError(f"{directory} holds a {meta.get('kind')!r} base, not a pixel base; use the matching prefix")
        unet_config = read_json(directory / "unet" / "config.json", what="pixel base UNet config")
        unet = UNet2DConditionModel.from_config(unet_config)
        _load_state(unet, load_safetensors(directory / "unet" / "diffusion_pytorch_model.safetensors"), directory)
        table = torch.nn.Parameter(_prompt_table(directory, int(unet.config.cross_attention_dim)))
        scheduler_config = read_json(directory / "scheduler" / "scheduler_config.json", what="pixel base scheduler")
        return cls(f"pixel:{directory.resolve()}", unet, scheduler_config, table, device=device)

    @property
    def reloadable(self) -> bool:
        """Only once saved: a pixel base created in memory has no folder yet."""
        return (Path(self.spec.partition(":")[2]) / PIXEL_MARKER).is_file()

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the base atomically piece by piece; the marker file is written last."""
        directory = Path(directory)
        with atomic_dir(directory / "unet", kind="pixel base UNet") as tmp:
            write_json(tmp / "config.json", json.loads(self.unet.to_json_string()))
            save_safetensors(self.unet.state_dict(), tmp / "diffusion_pytorch_model.safetensors")
        with atomic_dir(directory / "scheduler", kind="pixel base scheduler") as tmp:
            write_json(tmp / "scheduler_config.json", self.scheduler_config)
        save_safetensors({"prompt_embeds": self.prompt_embeds.detach()}, directory / "prompts.safetensors")
        write_json(directory / PIXEL_MARKER, {"kind": "pixel", "resolution": self.resolution,
                                              "format_version": 1})
        self.spec = f"pixel:{directory.resolve()}"
        return directory

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Unlock and return the UNet weights and the prompt table (for ``featinv base train``)."""
        self.unet.train()
        self.unet.requires_grad_(True)
        self.prompt_embeds.requires_grad_(True)
        return [*self.unet.parameters(), self.prompt_embeds]

    def training_loss(self, images01: torch.Tensor, drop: torch.Tensor,
                      generator: torch.Generator | BatchDraws | None = None) -> torch.Tensor:
        """Denoising loss of the plain base (noise or v target); ``drop`` selects the empty prompt."""
        draws = BatchDraws.of(generator)
        x0 = self.encode(images01)
        scheduler = self.make_scheduler("ddpm")
        noise = draws.randn(x0.shape).to(self.device)
        t = draws.randint(self.num_train_timesteps, x0.shape[0]).to(self.device)
        noisy = scheduler.add_noise(x0, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=self.prompt_embeddings(drop)).sample
        target = noise if self.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(pred.float(), target.float())


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FeatinvError(f"weights in {where} do not fit their config ({str(exc).splitlines()[0]}); "
                           "recreate the folder") from None


def _prompt_table(directory: Path, width: int) -> torch.Tensor:
    """The ``[2, tokens, width]`` prompt table of a pixel base, or one line saying why the file is unusable."""
    path = directory / "prompts.safetensors"
    table = load_safetensors(path).get("prompt_embeds")
    if table is None or table.ndim != 3 or table.shape[0] != 2 or table.shape[2] != width:
        shape = "no 'prompt_embeds' tensor" if table is None else f"shape {tuple(table.shape)}"
        raise FeatinvError(f"prompt table {path} has {shape}, not [2, tokens, {width}] as the UNet needs; "
                           "recreate the base folder")
    return table


# ---- loading by spec ------------------------------------------------------------------------------

def load_base(spec: str | DiffusionBase, device: str | torch.device = "cpu",
              resolution: int | None = None) -> DiffusionBase:
    """``PREFIX:ARG`` of a registered base (``sd:PATH_OR_HUB_ID``, ``pixel:DIR``, ...) | a bare folder (the
    registered base that recognises it) | an existing base. Its sizes are checked (:func:`check_resolution`);
    ``resolution`` overrides the image size its UNet config implies."""
    if isinstance(spec, DiffusionBase):
        return check_resolution(spec.to(device), resolution)
    from featinv.registry import base_for_folder, create_base, is_base

    if not is_base(spec):
        folder = Path(spec).expanduser()
        name = base_for_folder(folder)
        if name is not None:
            return check_resolution(create_base(f"{name}:{folder}", device=device), resolution)
    return check_resolution(create_base(spec, device=device), resolution)


def check_resolution(base: DiffusionBase, resolution: int | None = None) -> DiffusionBase:
    """Refuse a base whose configs disagree on its sizes, or set the image size to ``resolution``.

    The image size is the UNet's ``sample_size`` × the VAE factor. A pipeline that rewrote ``sample_size``
    (MiniSD saved with 64 would train and sample at 512 px without a word) disagrees with the VAE's own
    ``sample_size``: that is a one-line error naming ``--resolution``, which sets the size explicitly.
    """
    factor, unet = base.vae_scale_factor, base.unet.config
    if base.vae is not None and int(base.vae.config.latent_channels) != base.latent_channels:
        raise FeatinvError(f"diffusion base {base.spec}: the VAE makes {base.vae.config.latent_channels}-channel "
                           f"latents but the UNet takes {base.latent_channels}; the folder mixes two models")
    if resolution is not None:
        multiple = factor * 2 ** (len(unet.block_out_channels) - 1)
        if int(resolution) < multiple or int(resolution) % multiple:
            raise FeatinvError(f"resolution {resolution} does not fit base {base.spec}: use a multiple of {multiple}")
        if int(resolution) != base.resolution:
            base.unet.register_to_config(sample_size=int(resolution) // factor)
        return base
    vae_size = getattr(base.vae.config, "sample_size", None) if base.vae is not None else None
    vae_size = vae_size[0] if isinstance(vae_size, (list, tuple)) else vae_size
    if vae_size is not None and int(vae_size) != base.resolution:
        raise FeatinvError(f"diffusion base {base.spec}: unet/config.json sample_size {unet.sample_size} means "
                           f"{base.resolution} px, but vae/config.json says {vae_size} px; pass --resolution "
                           f"{vae_size} (or {base.resolution}) to choose, or correct the folder's configs")
    return base
