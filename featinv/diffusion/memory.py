"""How many reconstructions fit in GPU memory at once: the sampler's batch from a memory budget.

A reconstruction batch holds, per sample, the latents, the ControlNet residuals and the UNet activations of
one guided denoiser call (twice the batch with classifier-free guidance) and one VAE decode; the weights are
already resident. :func:`fitting_batch_size` measures that per-sample peak once (a denoiser call and a decode
at batch 1 and at batch 2; the difference is one sample's share) and divides the free memory by it. On a
CPU there is no budget to read, so the requested batch is returned unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

#: part of the free GPU memory a batch may take (the allocator's fragmentation and cuDNN workspaces need the rest)
DEFAULT_BUDGET = 0.85


def fitting_batch_size(model: Any, wanted: int, guidance_scale: float = 1.0, budget: float = DEFAULT_BUDGET) -> int:
    """The largest batch up to ``wanted`` whose sampling fits ``budget`` of the free GPU memory (at least 1);
    ``wanted`` itself on a CPU."""
    device = torch.device(model.device)
    if device.type != "cuda":
        return max(1, int(wanted))
    free, _total = torch.cuda.mem_get_info(device)
    one, two = (sample_footprint(model, guidance_scale, batch) for batch in (1, 2))
    per_sample = max(1, two - one)
    fixed = max(0, one - per_sample)  # what any batch needs (workspaces, the decode chunk's buffers)
    return max(1, min(int(wanted), int((free * budget - fixed) // per_sample)))


@torch.inference_mode()
def sample_footprint(model: Any, guidance_scale: float, batch: int) -> int:
    """Peak bytes above the resident weights of one guided denoiser call plus one VAE decode at ``batch``."""
    from featinv.diffusion.sampler import guided_prediction

    device = torch.device(model.device)
    base = model.base
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    entry = model.config["backbone"]
    features = torch.zeros(batch, int(entry["channels"]), *entry["grid"], device=device)
    latents = torch.zeros(batch, base.latent_channels, base.latent_size, base.latent_size, device=device)
    cond = base.prompt_embeddings(torch.zeros(batch, dtype=torch.bool))
    uncond = base.prompt_embeddings(torch.ones(batch, dtype=torch.bool))
    half = next(base.unet.parameters()).dtype
    with torch.autocast(device.type, dtype=half, enabled=half != torch.float32):
        guided_prediction(base.unet, model.controlnet, latents, torch.tensor(500, device=device), features, cond,
                          uncond, guidance_scale)
    base.decode(latents)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)
