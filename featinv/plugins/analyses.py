"""Built-in analyses: ``steering`` (FeatInv-Viz), ``interpolation`` and ``compose``.

Each factory takes the analysis options and returns an object whose ``run(model, images, out_dir, ...)``
writes one figure + JSON per image and a ``summary.json``.
"""

from __future__ import annotations

from typing import Any

from featinv.hookspecs import hookimpl


def steering(**options: Any) -> Any:
    """FeatInv-Viz: attenuate one concept, reconstruct with the same seeds, map the pixel difference."""
    from featinv.analyses.steering import Steering

    return Steering(**options)


def interpolation(**options: Any) -> Any:
    """Reconstructions of convex combinations of two images' feature maps."""
    from featinv.analyses.interpolation import Interpolation

    return Interpolation(**options)


def compose(**options: Any) -> Any:
    """Replace a region of one feature map by another image's and reconstruct."""
    from featinv.analyses.compose import Composition

    return Composition(**options)


@hookimpl
def register_analyses(register: Any) -> None:
    register("steering", steering, description="FeatInv-Viz: concept steering shown in input space (Algorithm 1)")
    register("interpolation", interpolation, description="reconstructions of weighted mixes of two feature maps")
    register("compose", compose, description="a region of one feature map replaced by another image's")
