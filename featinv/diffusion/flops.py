"""FLOPs of one sample through the real modules, counted with ``torch.utils.flop_counter.FlopCounterMode``.

What the dry runs (``featinv train|eval|reconstruct --dry-run``) and ``benchmarks/flops.py`` estimate from:
each module of a built model runs once at batch 1 on the ``meta`` device (shapes only: no arithmetic, no
memory, so a paper-size model is counted in seconds on any machine; a FLOP count does not depend on the
device or the weights). Attention is forced onto PyTorch's math path so it is counted everywhere (the CPU's
fused SDPA kernel has no FLOP formula and would count as 0). Multiply and add count as 2 FLOPs. A module that
cannot be counted is reported as ``None`` with the reason, never as a guessed number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FlopCount", "count_flops", "counting_flops", "sample_flops", "training_flops"]


@contextlib.contextmanager
def counting_flops() -> Iterator[Any]:
    """``FlopCounterMode`` with attention on the math path (two matmuls: 4·b·h·s²·d, as the GPU kernels' formulas)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations (multiply and add counted separately) of one call of ``fn``."""
    with counting_flops() as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class FlopCount:
    """One module's FLOPs per sample, or ``None`` with ``note`` saying why it could not be counted."""

    what: str
    flops: int | None
    note: str = ""


def _counted(what: str, fn: Callable[[], Any]) -> FlopCount:
    try:
        return FlopCount(what, count_flops(fn))
    except Exception as exc:  # a module whose ops cannot run on the meta device: say so, never guess
        return FlopCount(what, None, f"could not be counted ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")


def on_meta(model: Any) -> Any:
    """``model`` moved to the meta device for counting (it is spent afterwards: its weights are gone). The
    input checks of ``FeatInv._conditioning`` read values (a NaN test) that meta tensors lack; they do no
    matrix work, so an instance attribute skips them (the class is untouched)."""
    model.base.prompt_embeds = model.base.prompt_embeds.detach().to("meta")  # a Parameter cannot change device type
    model.to("meta")
    model._conditioning = lambda features: features.to("meta", torch.float32)
    return model


def _backbone_count(model: Any) -> FlopCount:
    info = model.backbone.info
    crops = torch.zeros(1, 3, *info.input_size, device=model.device)
    with torch.no_grad():
        return _counted("backbone forward", lambda: model.backbone.features(crops, pooled=model.pooled))


def sample_flops(model: Any, guidance_scale: float) -> list[FlopCount]:
    """Per reconstructed image (batch 1): the backbone forward on the original, one denoiser call
    (ControlNet + UNet; with classifier-free guidance both branches, as the sampler batches them) and the
    VAE decode (none for a pixel-space base). Multiply the denoiser call by the steps."""
    from featinv.diffusion.sampler import guided_prediction

    base, device = model.base, model.device
    info = model.backbone.info
    feats = torch.zeros(1, info.channels, *info.grid, device=device)
    latents = torch.zeros(1, base.latent_channels, base.latent_size, base.latent_size, device=device)
    cond, uncond = (base.prompt_embeddings(torch.tensor([flag])).to(device) for flag in (False, True))
    t = torch.tensor(500, device=device)
    model.controlnet.eval()
    counts = [_backbone_count(model)]
    with torch.inference_mode():
        counts.append(_counted("denoiser call (ControlNet + UNet" + (", ×2 for guidance)" if guidance_scale != 1.0
                                                                     else ")"),
                               lambda: guided_prediction(base.unet, model.controlnet, latents, t, feats, cond, uncond,
                                                         guidance_scale)))
        if base.vae is None:
            counts.append(FlopCount("VAE decode", 0, "pixel-space base: no VAE"))
        else:
            counts.append(_counted("VAE decode", lambda: base.decode(latents)))
    return counts


def training_flops(model: Any, with_backbone: bool = True) -> list[FlopCount]:
    """Per training sample (batch 1): the frozen backbone's forward and the loss's forward + backward as the
    trainer runs them (VAE encode, ControlNet and UNet forward, the backward into the ControlNet). The real
    backward is counted rather than the usual "≈ 2× forward" rule, so the figure matches ``benchmarks/flops.py``."""
    base, device = model.base, model.device
    info = model.backbone.info
    targets = torch.zeros(1, 3, base.resolution, base.resolution, device=device)
    generator = torch.Generator().manual_seed(0)
    model.trainable_parameters()

    def loss_and_backward() -> None:
        feats = torch.zeros(1, info.channels, *info.grid, device=device)
        model.training_loss(feats, targets, torch.zeros(1, dtype=torch.bool), generator).backward()

    counts = [_backbone_count(model)] if with_backbone else []
    counts.append(_counted("loss forward + backward (VAE encode, ControlNet, UNet)", loss_and_backward))
    model.controlnet.zero_grad(set_to_none=True)
    return counts


def total(counts: list[FlopCount], repeat: dict[str, int] | None = None) -> int | None:
    """The sum of ``counts`` (``repeat`` multiplies the one whose ``what`` starts with a key); None if any is None."""
    if any(c.flops is None for c in counts):
        return None
    factors = repeat or {}
    return sum(int(c.flops or 0) * next((n for key, n in factors.items() if c.what.startswith(key)), 1) for c in counts)
