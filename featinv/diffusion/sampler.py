"""The denoising loop, written out once: per-sample seeded noise, ControlNet-steered UNet, CFG, scheduler steps.

Reproducibility rule: a sample's result depends only on its own features and seed. Each sample owns a
CPU ``torch.Generator`` seeded with its seed; it draws the initial noise and any noise a stochastic
scheduler adds later (diffusers schedulers accept one generator per sample). DDIM with eta 0, DPM-Solver++
and UniPC add no noise after the start.

Feature guidance (:mod:`featinv.diffusion.guidance`) is one optional line in the loop: at a guided step
the latents are nudged toward the target features before the step's prediction; off, nothing runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from diffusers import UNet2DConditionModel

from featinv.diffusion.controlnet import ControlScales, FeatInvControlNet, controlled_unet
from featinv.diffusion.guidance import FeatureGuidance, GuidanceTarget, guide_latents
from featinv.errors import FeatinvError


def seeded_noise(seeds: Sequence[int], shape: Sequence[int], device: torch.device) -> tuple[torch.Tensor, list[torch.Generator]]:
    """``[N, *shape]`` standard normal noise, row ``i`` drawn from a generator seeded with ``seeds[i]``.

    The generators live on the CPU so the same seed gives the same image on every device.
    """
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])
    return noise.to(device), generators


def guided_prediction(unet: UNet2DConditionModel, controlnet: FeatInvControlNet | None, latents: torch.Tensor,
                      timestep: torch.Tensor, features: torch.Tensor | None, cond_embeds: torch.Tensor,
                      uncond_embeds: torch.Tensor, guidance_scale: float,
                      control: ControlScales | None = None) -> torch.Tensor:
    """Classifier-free guidance as in the official code: the feature map is given to *both* branches,
    only the prompt differs; both branches run as one batched call. Guidance 1 needs only the
    conditional branch. Without a ControlNet (``controlnet`` and ``features`` None) this is plain
    text-to-image guidance of the base. ``control``: the authors' control strength / guess mode (in guess
    mode the unconditional branch gets no features).
    """
    if guidance_scale == 1.0:
        return controlled_unet(unet, controlnet, latents, timestep, cond_embeds, features, control)
    guess = control is not None and control.guess_mode and features is not None
    both = controlled_unet(unet, controlnet, torch.cat([latents, latents]), timestep,
                           torch.cat([uncond_embeds, cond_embeds]),
                           None if features is None else features if guess else torch.cat([features, features]),
                           control, uncontrolled=len(latents) if guess else 0)
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def denoise(unet: UNet2DConditionModel, controlnet: FeatInvControlNet | None, scheduler,
            features: torch.Tensor | None, cond_embeds: torch.Tensor, uncond_embeds: torch.Tensor, seeds: Sequence[int],
            latent_shape: Sequence[int], steps: int = 50, guidance_scale: float = 1.75,
            bf16: bool = False, on_step: Callable[[], None] | None = None,
            feature_guidance: FeatureGuidance | None = None, target: GuidanceTarget | None = None,
            control: ControlScales | None = None) -> torch.Tensor:
    """Sample clean latents for a batch of feature maps (or, with no ControlNet, from the base alone).

    features: ``[N, C, h, w]`` (None without a ControlNet); cond/uncond_embeds: ``[N, L, D]`` prompt /
    empty-prompt embeddings; seeds: one per sample; latent_shape: ``(C_latent, H, W)``. Returns
    ``[N, *latent_shape]``. The class-prompt baseline and the base's validation samples use this loop too.
    With active ``feature_guidance`` (and its ``target``), guided steps first move the latents toward the
    target features; call it outside ``torch.inference_mode`` then (guidance needs gradients). ``control``:
    the authors' control strength and guess mode (:class:`~featinv.diffusion.controlnet.ControlScales`).
    """
    device = cond_embeds.device
    scheduler.set_timesteps(steps, device=device)
    noise, generators = seeded_noise(seeds, latent_shape, device)
    latents = noise * scheduler.init_noise_sigma
    # stochastic schedulers (DDIM eta>0, DDPM, SDE solvers) draw later noise from the same per-sample generators
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    guided = feature_guidance is not None and feature_guidance.active
    if guided and target is None:
        raise FeatinvError("feature guidance needs a GuidanceTarget (the backbone and the maps to match); "
                           "pass target= or use FeatInv.reconstruct(feature_guidance=...)")
    half = _autocast_dtype(unet, bf16, device)
    for index, t in enumerate(scheduler.timesteps):

        def predict(x: torch.Tensor, rows: slice = slice(None), t: torch.Tensor = t) -> torch.Tensor:
            with torch.autocast(device.type, dtype=half or torch.bfloat16, enabled=half is not None):
                return guided_prediction(unet, controlnet, scheduler.scale_model_input(x, t), t,
                                         None if features is None else features[rows], cond_embeds[rows],
                                         uncond_embeds[rows], guidance_scale, control)

        weight = feature_guidance.weight(index, len(scheduler.timesteps)) if guided else 0.0
        if weight > 0.0:
            latents = guide_latents(feature_guidance, target, scheduler, latents, t, weight, predict)
        pred = predict(latents)
        latents = scheduler.step(pred.float(), t, latents, **step_kwargs).prev_sample
        if on_step is not None:
            on_step()
    return latents


def _autocast_dtype(unet: torch.nn.Module, bf16: bool, device: torch.device) -> torch.dtype | None:
    """The denoiser's autocast precision: that of a UNet stored in half precision (its inputs must match), else
    bf16 when asked for on CUDA (a CPU ignores ``bf16``: it is slower there), else none (fp32)."""
    stored = next(unet.parameters()).dtype
    if stored != torch.float32:
        return stored
    return torch.bfloat16 if bf16 and device.type == "cuda" else None
