"""Registers the built-in feature encoders; the classes (and diffusers) load only when one is built."""

from __future__ import annotations

from typing import Any

from featinv.hookspecs import hookimpl


def conv(**config: Any) -> Any:
    """``conv``: bilinear upsample to the latent grid + shallow CNN with a zero-initialised output (paper)."""
    from featinv.plugins.encoder_models import ConvEncoder

    return ConvEncoder(**config)


def perceiver(**config: Any) -> Any:
    """``perceiver``: learned latents cross-attend to the feature tokens (the paper's ablation)."""
    from featinv.plugins.encoder_models import PerceiverEncoder

    return PerceiverEncoder(**config)


@hookimpl
def register_encoders(register) -> None:  # noqa: ANN001 - pluggy passes the register callable
    register("conv", conv, description="bilinear upsample + shallow CNN, zero-init output (paper)")
    register("perceiver", perceiver, description="learned latents cross-attend to feature tokens")
