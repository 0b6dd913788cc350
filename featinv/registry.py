"""The plugin manager and one registry per plugin kind (timm-style list/create/is functions).

Built-in plugins (:data:`DEFAULT_PLUGINS`, module names) are loaded exactly like third-party ones (entry
points in the group ``featinv``), so a built-in is never privileged; the core never imports them.

Plugins register per *package* (a distribution; each built-in module counts as its own), all or
nothing: a package whose hook raises, that breaks a kind's contract (:data:`CONTRACTS`) or that registers
a name another package already has is disabled as a whole and its reason recorded in
:func:`plugin_errors`; the others keep working. This module is ground floor: the base classes named by
the contracts are imported only when a registration is checked.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from featinv import hookspecs
from featinv.errors import FeatinvError, did_you_mean

ENTRY_POINT_GROUP = "featinv"
DISABLE_AUTOLOAD_ENV = "FEATINV_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PACKAGE = "featinv"
#: the built-in plugin modules, imported by name like entry points (the core never imports featinv.plugins)
DEFAULT_PLUGINS: tuple[str, ...] = (
    "featinv.plugins.backbones.timm",
    "featinv.plugins.backbones.torchvision",
    "featinv.plugins.backbones.hf",
    "featinv.plugins.backbones.py",
    "featinv.plugins.bases.pixel",
    "featinv.plugins.bases.sd",
    "featinv.plugins.encoders.conv",
    "featinv.plugins.encoders.perceiver",
    "featinv.plugins.decomposers.mcd",
    "featinv.plugins.decomposers.nmf",
    "featinv.plugins.decomposers.sae",
    "featinv.plugins.analyses.steering",
    "featinv.plugins.analyses.interpolation",
    "featinv.plugins.analyses.compose",
)
KINDS = ("backbones", "bases", "encoders", "decomposers", "analyses")
_SINGULAR = {"backbones": "backbone", "bases": "base", "encoders": "encoder", "decomposers": "decomposer",
             "analyses": "analysis"}


@dataclass(frozen=True)
class Contract:
    """What a registered factory of one kind must be: a class (``base`` as ``module:Class``) whose
    ``name_attribute`` equals the registered name, optionally with a diffusers-configured ``__init__``."""

    base: str
    name_attribute: str
    config_init: bool = False


#: per-kind contracts; kinds without one (backbones, bases) only need a callable factory
CONTRACTS: dict[str, Contract] = {
    "encoders": Contract("featinv.diffusion.encoders:FeatureEncoder", "encoder_name", config_init=True),
    "decomposers": Contract("featinv.concepts.base:Decomposer", "name"),
    "analyses": Contract("featinv.analyses.base:Analysis", "name"),
}


def _import_object(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def contract_violation(kind: str, name: str, factory: Any) -> str | None:
    """Why ``factory`` may not be registered as ``name`` of ``kind`` (None when it keeps the contract)."""
    singular = _SINGULAR[kind]
    contract = CONTRACTS.get(kind)
    if contract is None:
        return None if callable(factory) else f"{singular} {name!r} is a {type(factory).__name__}, not a callable factory"
    base_path = contract.base.replace(":", ".")
    if not (isinstance(factory, type) and issubclass(factory, _import_object(contract.base))):
        got = factory.__qualname__ if isinstance(factory, type) else type(factory).__name__
        return f"{singular} {name!r} must be a class subclassing {base_path}, got {got}"
    declared = getattr(factory, contract.name_attribute, "")
    if declared != name:
        return (f"{singular} class {factory.__name__} must set the class attribute "
                f"{contract.name_attribute} = {name!r} (it is {declared!r})")
    if contract.config_init and not hasattr(factory.__init__, "__wrapped__"):
        return f"{singular} class {factory.__name__} must decorate __init__ with diffusers' @register_to_config"
    if inspect.isabstract(factory):
        missing = ", ".join(sorted(factory.__abstractmethods__))
        return f"{singular} class {factory.__name__} leaves abstract methods unimplemented: {missing}"
    return None


@dataclass(frozen=True)
class Entry:
    """One registered name: what builds it and which package provided it."""

    name: str
    factory: Callable[..., Any]
    package: str
    description: str = ""
    #: bases only: whether a bare folder holds this kind of base
    recognizes: Callable[[Path], bool] | None = None


@dataclass
class Registry:
    """Names of one plugin kind mapped to their factories."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)
    #: names that only a disabled package provides -> that package's reason (for a precise error)
    withheld: dict[str, str] = field(default_factory=dict)

    @property
    def singular(self) -> str:
        return _SINGULAR[self.kind]

    def add(self, entry: Entry) -> None:
        """Add one entry (collisions are refused earlier, per package, by the plugin loader)."""
        if entry.name in self.entries:
            raise FeatinvError(f"{self.singular} name {entry.name!r} is registered twice; this is a bug in featinv")
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
        if key in self.entries:
            return self.entries[key]
        if key in self.withheld:
            raise FeatinvError(f"{self.singular} {key!r} is unavailable: {self.withheld[key]}")
        raise FeatinvError(
            f"unknown {self.singular} {key!r}: {did_you_mean(key, self.entries)} "
            f"(run `featinv plugins` to list every registered name)"
        )

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build ``name``: ``prefix:arg`` calls ``factory(arg, **kw)``, a plain name ``factory(**kw)``."""
        key, sep, arg = name.partition(":")
        entry = self.get(key)
        if sep:
            if not arg:
                raise FeatinvError(f"{self.singular} spec {name!r} has nothing after ':'; write e.g. {key}:NAME")
            return entry.factory(arg, **kwargs)
        return entry.factory(**kwargs)

    def recognize(self, folder: Path) -> str | None:
        """The first registered name whose ``recognizes(folder)`` is true (bases given as a bare folder)."""
        return next((e.name for e in self.entries.values() if e.recognizes is not None and e.recognizes(folder)), None)


@dataclass
class Plugin:
    """One loaded plugin object and the package it is enabled or disabled with."""

    name: str
    obj: Any
    package: str  # shown in listings: the distribution, or "featinv" for built-ins
    unit: str  # what is disabled together: the distribution, or the module of a built-in


@dataclass
class PluginState:
    """Everything loaded from plugins: the pluggy manager, registries and failures."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry]
    errors: dict[str, str]
    packages: dict[str, str]
    disabled: set[str] = field(default_factory=set)


_STATE: PluginState | None = None
#: packages disabled from outside the registry (a failing ``register_commands``), by package -> reason
_DISABLED_ELSEWHERE: dict[str, str] = {}


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _builtin_plugins(errors: dict[str, str]) -> list[Plugin]:
    plugins = []
    for module_name in DEFAULT_PLUGINS:
        try:
            plugins.append(Plugin(module_name, importlib.import_module(module_name), BUILTIN_PACKAGE, module_name))
        except Exception as exc:  # a broken built-in must not hide the others
            errors[module_name] = _one_line(exc)
    return plugins


def third_party_plugins(extra_plugins: tuple[Any, ...] = (), autoload: bool | None = None,
                        errors: dict[str, str] | None = None) -> list[Plugin]:
    """Entry-point plugins (unless autoload is off), ordered by package, then ``extra_plugins``.

    Loading them does not import the built-ins, so the CLI can add plugin commands and still start fast.
    """
    errors = {} if errors is None else errors
    if autoload is None:
        autoload = not os.environ.get(DISABLE_AUTOLOAD_ENV)
    plugins: list[Plugin] = []
    if autoload:
        points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(points, key=lambda p: (p.dist.name if p.dist is not None else p.name, p.name)):
            if ep.name in DEFAULT_PLUGINS or any(p.name == ep.name for p in plugins):
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # report by name, keep the rest
                errors[ep.name] = _one_line(exc)
                continue
            package = ep.dist.name if ep.dist is not None else ep.name
            plugins.append(Plugin(ep.name, obj, package, package))
    for obj in extra_plugins:
        package = getattr(obj, "__name__", type(obj).__name__).split(".")[0]
        plugins.append(Plugin(f"{package}-{id(obj)}", obj, package, package))
    return plugins


def _hook_functions(manager: pluggy.PluginManager, hook_name: str, plugin_name: str) -> list[Callable[..., Any]]:
    return [impl.function for impl in getattr(manager.hook, hook_name).get_hookimpls()
            if impl.plugin_name == plugin_name]


def _stage_unit(manager: pluggy.PluginManager, plugins: list[Plugin],
                registries: dict[str, Registry]) -> tuple[list[tuple[str, Entry]], str | None]:
    """Call every register hook of one package into a staging list; returns it and why it fails, if it does."""
    staged: list[tuple[str, Entry]] = []
    package = plugins[0].package
    for kind in KINDS:
        def register(name: str, factory: Callable[..., Any], *, description: str = "",
                     recognizes: Callable[[Path], bool] | None = None, _kind: str = kind) -> None:
            staged.append((_kind, Entry(name, factory, package, description, recognizes)))

        for plugin in plugins:
            for function in _hook_functions(manager, f"register_{kind}", plugin.name):
                try:
                    function(register=register)
                except Exception as exc:
                    return staged, f"{_one_line(exc)} in register_{kind}"
    seen: dict[tuple[str, str], str] = {}
    for kind, entry in staged:
        singular = _SINGULAR[kind]
        if kind != "bases" and entry.recognizes is not None:
            return staged, f"{singular} {entry.name!r} passes recognizes=, which only bases take"
        existing = registries[kind].entries.get(entry.name)
        if existing is not None or (kind, entry.name) in seen:
            other = existing.package if existing is not None else package
            return staged, (f"{singular} name {entry.name!r} is registered by both {other!r} and {package!r}; "
                            "uninstall one of them")
        seen[(kind, entry.name)] = package
        try:
            violation = contract_violation(kind, entry.name, entry.factory)
        except Exception as exc:  # the contract's base class failed to import
            violation = f"cannot check {singular} {entry.name!r}: {_one_line(exc)}"
        if violation:
            return staged, violation + " (see docs/plugins.md)"
    return staged, None


def _register_all(manager: pluggy.PluginManager, plugins: list[Plugin], state: PluginState) -> None:
    units: dict[str, list[Plugin]] = {}
    for plugin in plugins:
        units.setdefault(plugin.unit, []).append(plugin)
    for unit, members in units.items():
        staged, failure = _stage_unit(manager, members, state.registries)
        if failure is None and unit in _DISABLED_ELSEWHERE:
            failure = _DISABLED_ELSEWHERE[unit]
        if failure is None:
            for kind, entry in staged:
                state.registries[kind].add(entry)
            continue
        reason = f"plugin package {members[0].package!r} is disabled: {failure}"
        state.errors[unit] = reason
        state.disabled.add(unit)
        for kind, entry in staged:
            state.registries[kind].withheld.setdefault(entry.name, reason)


def build_state(extra_plugins: tuple[Any, ...] = (), autoload: bool | None = None) -> PluginState:
    """Load built-ins, entry points (unless disabled) and ``extra_plugins``; fill every registry."""
    manager = pluggy.PluginManager("featinv")
    manager.add_hookspecs(hookspecs)
    errors: dict[str, str] = {}
    plugins = _builtin_plugins(errors) + third_party_plugins(extra_plugins, autoload, errors)
    for plugin in plugins:
        manager.register(plugin.obj, name=plugin.name)
    state = PluginState(manager, {kind: Registry(kind) for kind in KINDS}, errors,
                        {plugin.name: plugin.package for plugin in plugins})
    _register_all(manager, plugins, state)
    return state


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


def disable_package(package: str, reason: str) -> None:
    """Disable ``package`` as a whole (e.g. its ``register_commands`` raised); its names are withheld."""
    failure = " ".join(reason.split())
    _DISABLED_ELSEWHERE[package] = failure
    if _STATE is None:
        return  # applied when the state is built
    message = f"plugin package {package!r} is disabled: {failure}"
    _STATE.errors[package] = message
    _STATE.disabled.add(package)
    for registry in _STATE.registries.values():
        for name in [n for n, e in registry.entries.items() if e.package == package]:
            del registry.entries[name]
            registry.withheld[name] = message


def disabled_packages() -> dict[str, str]:
    """Packages disabled as a whole (name collision, contract broken, hook raised), with the reason."""
    state = get_state()
    return {unit: state.errors[unit] for unit in state.disabled}


def get_registry(kind: str) -> Registry:
    """The registry of one plugin kind (backbones, bases, encoders, ...)."""
    if kind not in KINDS:
        raise FeatinvError(f"unknown plugin kind {kind!r}; use one of {', '.join(KINDS)}")
    return get_state().registries[kind]


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to import, and packages disabled as a whole, by name, with the reason."""
    return dict(get_state().errors)


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide pluggy plugin manager."""
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


def base_for_folder(folder: str | os.PathLike[str]) -> str | None:
    """The registered base that recognises ``folder`` (given without a ``prefix:``), if any."""
    return get_registry("bases").recognize(Path(folder))


def plugin_listing() -> dict[str, Any]:
    """Every registered name per kind with its providing package, plus plugins that failed or were disabled."""
    registered = {}
    for kind in KINDS:
        registry = get_registry(kind)
        registered[kind] = [
            {"name": name, "package": registry.entries[name].package, "description": registry.entries[name].description}
            for name in registry.list()
        ]
    return {"registered": registered, "errors": plugin_errors(), "disabled": sorted(get_state().disabled)}
