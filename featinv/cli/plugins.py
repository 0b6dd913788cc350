"""`featinv plugins`: what every plugin kind has registered, and which package provided it."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from featinv.cli.options import JsonOutput
from featinv.console import console


def plugins(json_output: JsonOutput = False) -> None:
    """List every registered backbone, base, encoder, decomposer and analysis.

    Example: featinv plugins --json
    """
    from featinv.registry import plugin_listing

    listing = plugin_listing()
    if json_output:
        console.print_json(json.dumps(listing))
        return
    table = Table(title="featinv plugins")
    for column in ("kind", "name", "package", "description"):
        table.add_column(column)
    for kind, entries in listing["registered"].items():
        for entry in entries:
            table.add_row(kind, entry["name"], entry["package"], entry["description"])
    console.print(table)
    for name, reason in listing["errors"].items():
        console.print(f"[yellow]plugin {name} failed to load:[/] {reason}")


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
