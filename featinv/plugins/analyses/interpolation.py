"""The built-in ``interpolation`` analysis: reconstructions of convex combinations of two feature maps."""

from __future__ import annotations

from featinv.analyses.interpolation import Interpolation
from featinv.hookspecs import Register, hookimpl


@hookimpl
def register_analyses(register: Register) -> None:
    register("interpolation", Interpolation, description="reconstructions of weighted mixes of two feature maps")
