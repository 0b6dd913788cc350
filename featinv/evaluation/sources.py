"""The originals an evaluation scores, and how they are split over processes.

Sources are listed without decoding (each knows how to open itself), so 10k-image sets never sit in
memory; :func:`shard` and :func:`process_group` let Accelerate / torchrun processes share the work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from featinv.errors import FeatinvError

__all__ = ["DataArg", "SourceImage", "chunks", "collect_sources", "process_group", "shard"]

T = TypeVar("T")
DataArg = str | os.PathLike[str] | Sequence[tuple[str, Image.Image]]


@dataclass
class SourceImage:
    """One original image: a unique name, its class (immediate subfolder) and how to open it."""

    name: str
    label: str
    opener: Callable[[], Image.Image]

    def image(self) -> Image.Image:
        """Open the image now (sources are listed without decoding them all up front)."""
        return self.opener()


def collect_sources(data: DataArg, per_class: int | None = None) -> list[SourceImage]:
    """Originals from a folder (first ``per_class`` per immediate subfolder, sorted) or from
    in-memory ``(name, PIL image)`` pairs (a name ``cls/x`` puts the image in class ``cls``)."""
    if per_class is not None and per_class < 1:
        raise FeatinvError(f"per_class must be at least 1, got {per_class}; use e.g. --per-class 10")
    groups: dict[str, list[SourceImage]] = {}
    if isinstance(data, (str, os.PathLike)):
        from featinv.data import find_images, open_image

        listing = find_images(data)
        for label, paths in listing.classes().items():
            for path in paths:
                name = path.relative_to(listing.root).as_posix() if path != listing.root else path.name
                groups.setdefault(label, []).append(SourceImage(name, label, lambda p=path: open_image(p)))
    else:
        from featinv.data import as_pil, is_image_object

        seen: set[str] = set()
        for entry in data:
            if not (isinstance(entry, tuple) and len(entry) == 2 and is_image_object(entry[1])):
                raise FeatinvError("data items must be (name, image) pairs (PIL or numpy); pass a folder path or "
                                   "such pairs")
            name, img = str(entry[0]), entry[1]
            if name in seen:
                raise FeatinvError(f"image name {name!r} occurs twice; give every in-memory image a unique name")
            seen.add(name)
            label = name.split("/")[0] if "/" in name else "images"
            rgb = as_pil(img)
            groups.setdefault(label, []).append(SourceImage(name, label, lambda im=rgb: im))
        if not groups:
            raise FeatinvError("no images given; pass a non-empty folder or list of (name, image) pairs")
    sources: list[SourceImage] = []
    for label in sorted(groups):
        chosen = sorted(groups[label], key=lambda s: s.name)
        sources.extend(chosen if per_class is None else chosen[:per_class])
    return sources


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Process ``rank`` of ``world_size`` takes every ``world_size``-th item (disjoint, covers all)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise FeatinvError(f"rank {rank} / world size {world_size} is invalid; need 0 <= rank < world size")
    return list(items[rank::world_size])


def process_group() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier): Accelerate's state when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state.wait_for_everyone


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    """Consecutive batches of at most ``size`` items (the last one may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
