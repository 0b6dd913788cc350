"""The built-in ``steering`` analysis (FeatInv-Viz, the paper's Algorithm 1)."""

from __future__ import annotations

from featinv.analyses.steering import Steering
from featinv.hookspecs import Register, hookimpl


@hookimpl
def register_analyses(register: Register) -> None:
    register("steering", Steering, description="FeatInv-Viz: concept steering shown in input space (Algorithm 1)")
