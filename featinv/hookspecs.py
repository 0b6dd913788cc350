"""Plugin hook specifications: one ``register_<kind>`` hook per plugin kind, plus CLI commands.

A plugin is a module with functions marked ``@hookimpl``, found through an entry point in the group
``featinv`` (featinv's own built-ins are such modules too, listed in ``featinv.registry.DEFAULT_PLUGINS``).
featinv calls each hook once, when the registries are first used, passing a :class:`Register`::

    from featinv import hookimpl
    from featinv.hookspecs import Register

    @hookimpl
    def register_decomposers(register: Register) -> None:
        register("pca", PCADecomposer, description="principal directions as concepts")

``create_<kind>("name", **kwargs)`` then calls ``factory(**kwargs)``, and ``create_<kind>("name:arg",
**kwargs)`` calls ``factory("arg", **kwargs)`` (e.g. ``timm:convnext_base``, ``sd:/models/minisd``).

Each kind's contract is checked when the hook registers (see docs/plugins.md); a plugin package that
breaks it, registers a name another package already has, or whose hook raises is disabled as a whole
and reported by ``featinv plugins``; everything else keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("featinv")
hookimpl = pluggy.HookimplMarker("featinv")


class Register(Protocol):
    """What every ``register_<kind>`` hook receives: call it once per name the plugin provides."""

    def __call__(self, name: str, factory: Callable[..., Any], *, description: str = "",
                 recognizes: Callable[[Path], bool] | None = None) -> None:
        """Add ``factory`` under ``name`` (shown with ``description`` by ``featinv plugins``).

        ``recognizes(folder) -> bool`` (bases only) lets ``load_base(folder)`` pick this base for a
        folder given without a ``prefix:``.
        """


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbone factories (contract: a callable).

    ``factory(model_name, layer=None, weights="pretrained", input_size=None, device="cpu")`` returns a
    :class:`featinv.features.backbone.Backbone`, for specs ``prefix:model_name`` (or ``factory(**kwargs)``
    for a spec without a colon). :mod:`featinv.features.weights` builds a model for ``weights``.
    """


@hookspec
def register_bases(register: Register) -> None:
    """Register diffusion-base factories (contract: a callable).

    ``factory(path_or_id, device="cpu")`` returns a :class:`featinv.diffusion.bases.DiffusionBase`, for
    specs like ``sd:/models/minisd`` or ``pixel:runs/base``; pass ``recognizes=`` to claim bare folders.
    """


@hookspec
def register_encoders(register: Register) -> None:
    """Register feature encoders (contract: the class itself).

    The factory is a subclass of :class:`featinv.diffusion.encoders.FeatureEncoder` whose class attribute
    ``encoder_name`` equals the registered name and whose ``__init__(self, in_channels, out_channels,
    grid, **config)`` is decorated with diffusers' ``@register_to_config``; ``forward`` maps ``[B, C, h, w]``
    (or pooled ``[B, C]``) features to ``[B, out_channels, *grid]``.
    """


@hookspec
def register_decomposers(register: Register) -> None:
    """Register concept decomposers (contract: the class itself).

    The factory is a subclass of :class:`featinv.concepts.base.Decomposer` whose class attribute ``name``
    equals the registered name, built as ``factory(n_concepts=K, **options)``; it implements ``_fit``,
    ``_concept_parts``, ``_state`` and ``_load_state`` and overrides ``options()`` when it takes more.
    """


@hookspec
def register_analyses(register: Register) -> None:
    """Register analyses (contract: the class itself).

    The factory is a subclass of :class:`featinv.analyses.base.Analysis` whose class attribute ``name``
    equals the registered name, built as ``factory(**options)``; it implements ``settings()``,
    ``compute(model, images, **inputs)`` and ``figure(item)``, and the base class's ``run`` writes them.
    """


@hookspec
def register_presets(register: Callable[[Any], None]) -> None:
    """Register named setups: call ``register(featinv.presets.Preset(name=..., ...))`` once per preset.

    They appear in ``featinv presets`` and work as ``--preset NAME`` exactly like the built-in ``paper:*``.
    """


@hookspec
def register_commands(app: Any) -> None:
    """Add CLI commands to ``app``, the root ``typer.Typer``; if this raises, the plugin package is disabled."""
