"""`featinv presets`: every named setup (``--preset NAME`` of train and eval) with all of its values."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer
from rich.table import Table

from featinv.cli.options import JsonOutput
from featinv.console import console


def presets(
    name: Annotated[str | None, typer.Argument(help="Show only this preset, e.g. paper:convnext.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """List the presets: one column per preset, one row per setting; explicit options override any of them.

    Example: featinv presets paper:convnext
    """
    from featinv import presets as registry

    chosen = [registry.get(name)] if name else [registry.get(n) for n in registry.names()]
    if json_output:
        console.print_json(json.dumps({p.name: dataclasses.asdict(p) for p in chosen}))
        return
    table = Table(title="presets (--preset NAME; an explicit option overrides its value)")
    table.add_column("setting", no_wrap=True)
    for preset in chosen:
        table.add_column(preset.name, overflow="fold")
    rows = [preset.rows() for preset in chosen]
    for index, (setting, _) in enumerate(rows[0]):
        table.add_row(setting, *(row[index][1] for row in rows))
    table.add_row("description", *(p.description for p in chosen), style="dim")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("presets")(presets)
