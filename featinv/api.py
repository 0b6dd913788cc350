"""Small API calls behind CLI commands that have no richer module of their own."""

from __future__ import annotations

from typing import Any

from featinv.registry import KINDS, get_registry, plugin_errors


def plugin_listing() -> dict[str, Any]:
    """Every registered name per kind with its providing package, plus plugins that failed to load."""
    registered = {}
    for kind in KINDS:
        registry = get_registry(kind)
        registered[kind] = [
            {"name": name, "package": registry.entries[name].package, "description": registry.entries[name].description}
            for name in registry.list()
        ]
    return {"registered": registered, "errors": plugin_errors()}
