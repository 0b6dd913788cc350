"""`featinv plugins`: what every plugin kind has registered, and which package provided it; and the
commands plugin packages add to the root app.

Plugin commands are added without importing the built-in plugins (so ``featinv --help`` stays fast);
each is guarded so that, if its package turns out to be disabled (a name collision, a broken contract, a
raising hook), running it is one error line, while every other command keeps working.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from featinv.cli.options import JsonOutput
from featinv.console import console
from featinv.errors import FeatinvError


def plugins(json_output: JsonOutput = False) -> None:
    """List every registered backbone, base, encoder, decomposer and analysis, and disabled plugins.

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
        line = reason if name in listing["disabled"] else f"plugin {name} failed to load: {reason}"
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)


def _guarded(callback: Callable[..., Any], package: str) -> Callable[..., Any]:
    """``callback``, refused with one line when its plugin package is disabled."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        from featinv.registry import disabled_packages

        reason = disabled_packages().get(package)
        if reason is not None:
            raise FeatinvError(f"this command needs {reason}; see `featinv plugins`")
        return callback(*args, **kwargs)

    return run


def _guard_new(group: typer.Typer, commands_before: int, groups_before: int, package: str) -> None:
    for info in group.registered_commands[commands_before:]:
        if info.callback is not None:
            info.callback = _guarded(info.callback, package)
    for sub in group.registered_groups[groups_before:]:
        if isinstance(sub.typer_instance, typer.Typer):
            _guard_new(sub.typer_instance, 0, 0, package)


def add_plugin_commands(app: typer.Typer) -> None:
    """Call every third-party ``register_commands(app)``; one that raises is undone and disables its package."""
    from featinv.registry import disable_package, third_party_plugins

    for plugin in third_party_plugins():
        hook = getattr(plugin.obj, "register_commands", None)
        if not callable(hook) or not hasattr(hook, "featinv_impl"):
            continue
        commands, groups = len(app.registered_commands), len(app.registered_groups)
        try:
            hook(app=app)
        except Exception as exc:  # a plugin's bug must not take the CLI down
            del app.registered_commands[commands:], app.registered_groups[groups:]
            disable_package(plugin.unit, f"{type(exc).__name__}: {exc} in register_commands")
            continue
        _guard_new(app, commands, groups, plugin.unit)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
