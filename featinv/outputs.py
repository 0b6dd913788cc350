"""Resumable output folders: the JSON index of finished outputs and the atomic PNG files it lists.

Folder reconstruction, evaluation and the class-prompt baseline all write images one batch at a time and
record each finished one in an index rewritten atomically after every batch, so an interrupted job resumes
without redoing work and a folder never mixes outputs made with different settings.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from featinv.errors import FeatinvError
from featinv.io import atomic_write, read_json, write_json

__all__ = ["INDEX_VERSION", "ResumableIndex", "save_png"]

INDEX_VERSION = 1


def save_png(img: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write a PNG atomically (an interrupted job never leaves a half-written image behind)."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


class ResumableIndex:
    """One index file: the settings its outputs were made with and one row per finished output.

    Two layouts exist on disk and both stay readable: ``versioned`` (``{"version", "settings", rows_field}``,
    evaluation and baseline) and flat (the settings at the top level beside ``rows_field``, folder
    reconstruction). ``key`` is the row field naming an output; settings in ``ignored`` may differ
    between runs (e.g. extra judging backbones, whose rows are checked by the caller).
    """

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, Any], *, what: str, key: str = "key",
                 rows_field: str = "rows", versioned: bool = True, ignored: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.settings = settings
        self.what = what
        self.key = key
        self.rows_field = rows_field
        self.versioned = versioned
        self.ignored = frozenset(ignored)
        self.rows: dict[str, dict[str, Any]] = {}

    def changed_settings(self, stored: dict[str, Any]) -> list[str] | None:
        """None when ``stored`` (a read index) was made with our settings, else the names that differ
        (in our settings' order; empty when only the format version or an unknown setting differs)."""
        if self.versioned:
            theirs = {k: v for k, v in stored.get("settings", {}).items() if k not in self.ignored}
        else:
            theirs = {k: stored.get(k) for k in self.settings}
        ours = {k: v for k, v in self.settings.items() if k not in self.ignored}
        if theirs == ours and (not self.versioned or stored.get("version") == INDEX_VERSION):
            return None
        return [k for k in ours if theirs.get(k) != ours[k]]

    def load(self, refusal: Callable[[list[str]], str]) -> dict[str, dict[str, Any]]:
        """Rows already finished (none when there is no index yet); refuse an index with other settings
        with the one-line message ``refusal(changed setting names)``."""
        if not self.path.is_file():
            return self.rows
        stored = read_json(self.path, what=self.what)
        changed = self.changed_settings(stored)
        if changed is not None:
            raise FeatinvError(refusal(changed))
        self.rows.update((row[self.key], row) for row in stored.get(self.rows_field, []))
        return self.rows

    def save(self, rows: Iterable[dict[str, Any]] | None = None, **extra: Any) -> None:
        """Rewrite the index atomically with ``rows`` (default: :attr:`rows`) and any extra top-level fields."""
        listed = list(self.rows.values() if rows is None else rows)
        if self.versioned:
            write_json(self.path, {"version": INDEX_VERSION, "settings": self.settings, self.rows_field: listed, **extra})
        else:
            write_json(self.path, {**self.settings, self.rows_field: listed, **extra})
