"""The ``--dry-run`` table of ``featinv train``, ``eval`` and ``reconstruct``: one way to print the resolved plan."""

from __future__ import annotations

from rich.table import Table

from featinv.console import console


def print_plan(title: str, rows: list[tuple[str, str]]) -> None:
    """``rows`` of ``(setting, value)`` as a two-column table under ``title`` (which says nothing was written)."""
    table = Table(title=title)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
