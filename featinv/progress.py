"""Rich progress bars shared by every long-running API call and CLI command."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def make_progress(*extra_columns: TextColumn, transient: bool = False) -> Progress:
    """A Progress with the columns featinv uses everywhere (extra columns e.g. for loss)."""
    from featinv.console import console

    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def progress(
    iterable: Iterable[T] | None = None,
    total: int | None = None,
    description: str = "",
    enabled: bool = True,
) -> Iterator[T]:
    """Iterate with a progress bar (no bar when ``enabled`` is False, e.g. in tests)."""
    if iterable is None:
        iterable = range(total or 0)  # type: ignore[assignment]
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not enabled:
        yield from iterable  # type: ignore[misc]
        return
    with make_progress() as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:  # type: ignore[union-attr]
            yield item
            bar.advance(task)


@contextlib.contextmanager
def stage(description: str, enabled: bool = True) -> Iterator[None]:
    """A spinner for one step whose length is unknown (loading a model, fitting)."""
    if not enabled:
        yield
        return
    from featinv.console import console

    with console.status(description):
        yield
