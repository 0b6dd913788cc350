"""Checks the backbone cannot be fooled on: pixel MSE, SSIM and high-frequency energy against the originals.

Feature guidance optimises the very cosine it is judged by, and the classifier's top-5 follows from it, so
those numbers alone cannot tell a better image from a backbone being fooled (docs/guidance.md). These
checks compare pixels instead. Images are ``[N, 3, H, W]`` tensors in [0, 1]; evaluation compares each
reconstruction at its own (the diffusion base's) resolution with its original resized and centre-cropped to
that size (:func:`featinv.evaluation.evaluate.square`, as for FID).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from featinv.errors import FeatinvError

__all__ = ["SSIM_MISSING", "guidance_warning", "high_frequency", "pixel_mse", "ssim", "ssim_available", "summarise_pixel_checks"]

SSIM_MISSING = "SSIM needs scikit-image: pip install 'featinv[demo]' (or scikit-image)"


def pixel_mse(images: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Per image: mean squared pixel error in [0, 1] units."""
    _check_pair(images, originals)
    return (images.float() - originals.float()).pow(2).flatten(1).mean(dim=1)


def high_frequency(images: torch.Tensor) -> torch.Tensor:
    """Per image: mean squared Laplacian response (texture / high-frequency energy; adversarial textures raise it)."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    return torch.nn.functional.conv2d(images.float(), kernel, groups=3).pow(2).flatten(1).mean(dim=1)


def ssim_available() -> bool:
    """Whether scikit-image (an optional dependency: the ``demo`` / ``test`` extras) is installed."""
    try:
        import skimage.metrics  # noqa: F401
    except ImportError:
        return False
    return True


def ssim(images: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Per image: structural similarity (scikit-image's, colour channels averaged, data range 1)."""
    _check_pair(images, originals)
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise FeatinvError(SSIM_MISSING) from None
    return torch.tensor([float(structural_similarity(a.permute(1, 2, 0).numpy(),
                                                     b.permute(1, 2, 0).numpy(),
                                                     channel_axis=2, data_range=1.0))
                         for a, b in zip(images.cpu(), originals.cpu(), strict=True)])


def _check_pair(images: torch.Tensor, originals: torch.Tensor) -> None:
    if images.shape != originals.shape:
        raise FeatinvError(f"images {tuple(images.shape)} and originals {tuple(originals.shape)} differ in shape; "
                           "resize the originals to the reconstructions' size first")


def summarise_pixel_checks(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the rows that carry the checks (rows from older evaluations do not): pixel MSE, SSIM and the
    high-frequency ratio (mean energy of the reconstructions over the originals')."""
    scored = [r for r in rows if "pixel_mse" in r]
    if not scored:
        return {}
    n = len(scored)
    ssims = [r["ssim"] for r in scored if r.get("ssim") is not None]
    hf_orig = sum(r["high_freq_original"] for r in scored)
    out: dict[str, Any] = {
        "pixel_mse": sum(r["pixel_mse"] for r in scored) / n,
        "ssim": sum(ssims) / len(ssims) if ssims else None,
        "high_freq_ratio": sum(r["high_freq"] for r in scored) / hf_orig if hf_orig > 0 else None,
        "n": n,
        "note": "each reconstruction vs its original resized and centre-cropped to the reconstruction's size; "
                "high_freq_ratio = mean squared Laplacian of reconstructions / of originals",
    }
    if not ssims:
        out["ssim_note"] = SSIM_MISSING
    return out


def guidance_warning(guided: dict[str, Any], unguided: dict[str, Any] | None = None) -> str | None:
    """A one-line warning when feature guidance raised the cosine but the pixel error went up.

    ``guided`` / ``unguided``: evaluation summaries (same originals and seeds). None when guidance is off,
    when no unguided summary is known (then the pixel checks are only reported), or when pixel MSE did not rise.
    """
    if not guided.get("feature_guidance") or unguided is None:
        return None
    mse_g = (guided.get("pixel_checks") or {}).get("pixel_mse")
    mse_u = (unguided.get("pixel_checks") or {}).get("pixel_mse")
    cos_g = (guided.get("cosine_sim") or {}).get("mean")
    cos_u = (unguided.get("cosine_sim") or {}).get("mean")
    if None in (mse_g, mse_u, cos_g, cos_u) or not (cos_g > cos_u and mse_g > mse_u):
        return None
    return (f"feature guidance raised the cosine ({cos_u:.3f} -> {cos_g:.3f}) but also the pixel error against "
            f"the originals ({mse_u:.4f} -> {mse_g:.4f}): it may be fooling the backbone; lower "
            "--feature-guidance and look at the images (docs/guidance.md)")
