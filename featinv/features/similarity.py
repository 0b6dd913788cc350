"""Feature-map agreement: the cosine score both evaluation and the sampler's fidelity use.

It lives here, below ``diffusion`` and ``evaluation``, so the sampler can score its own outputs without
importing the evaluation layer; :mod:`featinv.evaluation.metrics` re-exports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featinv.errors import FeatinvError

__all__ = ["cosine_median", "cosine_positions"]


def cosine_median(f_orig: torch.Tensor, f_rec: torch.Tensor) -> torch.Tensor:
    """Per image: cosine similarity over channels at each position, median over positions.

    The paper reports the median rather than the mean because a few background positions with
    tiny activations would otherwise dominate. ``f_*`` are ``[B, C, h, w]`` (or ``[B, C]``, one
    position); the median of an even number of positions is the mean of the two middle values,
    like ``numpy.median``.
    """
    return torch.quantile(cosine_positions(f_orig, f_rec).double(), 0.5, dim=1).float()


def cosine_positions(f_orig: torch.Tensor, f_rec: torch.Tensor) -> torch.Tensor:
    """``[B, h*w]``: the cosine similarity over channels at every position (float64), before any median.

    The paper's "median of all superpixels" pools these over a whole image set
    (:func:`featinv.evaluation.cosine.pooled_median`); :func:`cosine_median` takes it per image.
    """
    if f_orig.shape != f_rec.shape:
        raise FeatinvError(
            f"feature maps differ in shape ({tuple(f_orig.shape)} vs {tuple(f_rec.shape)}); "
            "compare maps from the same backbone, layer and input size"
        )
    if f_orig.dim() == 2:
        f_orig, f_rec = f_orig[..., None, None], f_rec[..., None, None]
    if f_orig.dim() != 4:
        raise FeatinvError(f"feature maps must be [B, C, h, w], got shape {tuple(f_orig.shape)}; pass NCHW maps")
    cos = F.cosine_similarity(f_orig.double(), f_rec.double(), dim=1, eps=1e-12)  # [B, h, w]
    return cos.flatten(1)
