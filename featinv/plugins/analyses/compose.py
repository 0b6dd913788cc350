"""The built-in ``compose`` analysis: a region of one feature map replaced by another image's."""

from __future__ import annotations

from featinv.analyses.compose import Composition
from featinv.hookspecs import Register, hookimpl


@hookimpl
def register_analyses(register: Register) -> None:
    register("compose", Composition, description="a region of one feature map replaced by another image's")
