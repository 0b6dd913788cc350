"""The plugin manager and one registry per plugin kind (timm-style list/create/is functions).

Built-in plugins (:data:`DEFAULT_PLUGINS`, module names) are loaded exactly like third-party ones (entry
points in the group ``featinv``), so a built-in is never privileged; the core never imports them. A plugin that fails to import is
recorded in :func:`plugin_errors` and skipped; the others keep working.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from featinv import hookspecs
from featinv.errors import FeatinvError, did_you_mean

ENTRY_POINT_GROUP = "featinv"
DISABLE_AUTOLOAD_ENV = "FEATINV_DISABLE_PLUGIN_AUTOLOAD"
#: the built-in plugin modules, imported by name like entry points (the core never imports featinv.plugins)
DEFAULT_PLUGINS: tuple[str, ...] = (
    "featinv.plugins.backbones",
    "featinv.plugins.bases",
    "featinv.plugins.encoders",
    "featinv.plugins.decomposers",
    "featinv.plugins.analyses",
)
KINDS = ("backbones", "bases", "encoders", "decomposers", "analyses")
_SINGULAR = {"backbones": "backbone", "bases": "base", "encoders": "encoder", "decomposers": "decomposer",
             "analyses": "analysis"}


@dataclass(frozen=True)
class Entry:
    """One registered name: what builds it and which package provided it."""

    name: str
    factory: Callable[..., Any]
    package: str
    description: str = ""


@dataclass
class Registry:
    """Names of one plugin kind mapped to their factories."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def singular(self) -> str:
        return _SINGULAR[self.kind]

    def add(self, entry: Entry) -> None:
        """Add one entry; a name registered twice is an error that names both packages."""
        existing = self.entries.get(entry.name)
        if existing is not None:
            raise FeatinvError(
                f"{self.singular} name {entry.name!r} is registered twice, by {existing.package!r} and "
                f"{entry.package!r}; uninstall one of them or disable one with {DISABLE_AUTOLOAD_ENV}=1"
            )
        self.entries[entry.name] = entry

    def list(self, filter: str = "*") -> list[str]:  # noqa: A002 - timm's argument name
        """Registered names matching the fnmatch ``filter``, sorted."""
        return sorted(name for name in self.entries if fnmatch.fnmatch(name, filter))

    def is_registered(self, name: str) -> bool:
        """Whether ``name`` (or the prefix of ``prefix:arg``) is registered."""
        return name.partition(":")[0] in self.entries

    def get(self, name: str) -> Entry:
        """The entry for ``name`` (or its prefix); an unknown name gets close matches."""
        key = name.partition(":")[0]
        if key not in self.entries:
            raise FeatinvError(
                f"unknown {self.singular} {key!r}: {did_you_mean(key, self.entries)} "
                f"(run `featinv plugins` to list every registered name)"
            )
        return self.entries[key]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build ``name``: ``prefix:arg`` calls ``factory(arg, **kw)``, a plain name ``factory(**kw)``."""
        key, sep, arg = name.partition(":")
        entry = self.get(key)
        if sep:
            if not arg:
                raise FeatinvError(f"{self.singular} spec {name!r} has nothing after ':'; write e.g. {key}:NAME")
            return entry.factory(arg, **kwargs)
        return entry.factory(**kwargs)


@dataclass
class PluginState:
    """Everything loaded from plugins: the pluggy manager, registries and import failures."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry]
    errors: dict[str, str]
    packages: dict[str, str]


_STATE: PluginState | None = None


def _load_default_plugins(manager: pluggy.PluginManager, errors: dict[str, str], packages: dict[str, str]) -> None:
    for module_name in DEFAULT_PLUGINS:
        try:
            manager.register(importlib.import_module(module_name), name=module_name)
            packages[module_name] = "featinv"
        except Exception as exc:  # a broken built-in must not hide the others
            errors[module_name] = f"{type(exc).__name__}: {exc}"


def _load_entry_points(manager: pluggy.PluginManager, errors: dict[str, str], packages: dict[str, str]) -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if manager.get_plugin(ep.name) is not None or manager.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # report by name, keep the rest
            errors[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        manager.register(plugin, name=ep.name)
        packages[ep.name] = ep.dist.name if ep.dist is not None else ep.name


def build_state(extra_plugins: tuple[Any, ...] = (), autoload: bool | None = None) -> PluginState:
    """Load built-ins, entry points (unless disabled) and ``extra_plugins``; fill every registry."""
    manager = pluggy.PluginManager("featinv")
    manager.add_hookspecs(hookspecs)
    errors: dict[str, str] = {}
    packages: dict[str, str] = {}
    _load_default_plugins(manager, errors, packages)
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    if autoload:
        _load_entry_points(manager, errors, packages)
    for plugin in extra_plugins:
        name = manager.register(plugin)
        if name is not None:
            packages[name] = getattr(plugin, "__name__", name).split(".")[0]
    registries = {kind: Registry(kind) for kind in KINDS}
    for kind in KINDS:
        hook = getattr(manager.hook, f"register_{kind}")
        for impl in reversed(hook.get_hookimpls()):  # registration order
            package = packages.get(impl.plugin_name, impl.plugin_name)

            def register(name: str, factory: Callable[..., Any], *, description: str = "",
                         _kind: str = kind, _package: str = package) -> None:
                registries[_kind].add(Entry(name, factory, _package, description))

            try:
                impl.function(register=register)
            except FeatinvError:
                raise
            except Exception as exc:
                errors[impl.plugin_name] = f"{type(exc).__name__} in register_{kind}: {exc}"
    return PluginState(manager, registries, errors, packages)


def get_state() -> PluginState:
    """The process-wide plugin state, built on first use."""
    global _STATE
    if _STATE is None:
        _STATE = build_state()
    return _STATE


def reset(extra_plugins: tuple[Any, ...] = (), autoload: bool | None = None) -> PluginState:
    """Rebuild the plugin state (tests, or after installing a plugin in a running process)."""
    global _STATE
    _STATE = build_state(extra_plugins, autoload)
    return _STATE


def get_registry(kind: str) -> Registry:
    """The registry of one plugin kind (backbones, bases, encoders, ...)."""
    if kind not in KINDS:
        raise FeatinvError(f"unknown plugin kind {kind!r}; use one of {', '.join(KINDS)}")
    return get_state().registries[kind]


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to import or register, by name, with the reason."""
    return dict(get_state().errors)


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide pluggy plugin manager (e.g. to call ``register_commands``)."""
    return get_state().manager


def _functions(kind: str) -> tuple[Callable[..., list[str]], Callable[..., Any], Callable[[str], bool]]:
    def list_names(filter: str = "*") -> list[str]:  # noqa: A002
        return get_registry(kind).list(filter)

    def create(name: str, **kwargs: Any) -> Any:
        return get_registry(kind).create(name, **kwargs)

    def is_name(name: str) -> bool:
        return get_registry(kind).is_registered(name)

    singular = _SINGULAR[kind]
    list_names.__doc__ = f"Registered {kind} matching an fnmatch ``filter``, sorted."
    create.__doc__ = f"Build the {singular} registered as ``name`` (``prefix:arg`` passes ``arg`` on)."
    is_name.__doc__ = f"Whether ``name`` (or its ``prefix:``) is a registered {singular}."
    return list_names, create, is_name


list_backbones, create_backbone, is_backbone = _functions("backbones")
list_bases, create_base, is_base = _functions("bases")
list_encoders, create_encoder, is_encoder = _functions("encoders")
list_decomposers, create_decomposer, is_decomposer = _functions("decomposers")
list_analyses, create_analysis, is_analysis = _functions("analyses")


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
