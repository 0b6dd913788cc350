"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FeatinvError(ValueError):
    """A problem the user can fix (bad name, bad path, bad number).

    The CLI prints it as one line and exits with code 2; anything else is a bug and keeps its traceback.
    """


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The registered names most similar to ``name``, for "did you mean" hints."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A short hint listing the closest names, or all of them when the list is short."""
    candidates = sorted(candidates)
    matches = closest(name, candidates)
    if matches:
        return "did you mean " + ", ".join(repr(m) for m in matches) + "?"
    if len(candidates) <= 8:
        return "known: " + ", ".join(candidates) if candidates else "none are registered"
    return f"{len(candidates)} are known"
