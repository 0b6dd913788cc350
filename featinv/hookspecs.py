"""Plugin hook specifications: one ``register_*`` hook per plugin kind, plus CLI commands.

A plugin is a module (or package) with functions marked ``@hookimpl``. featinv calls each hook once,
when the registries are first used, passing a ``register`` callable::

    from featinv import hookimpl

    @hookimpl
    def register_decomposers(register):
        register("pca", PCADecomposer, description="principal components as concepts")

``register(name, factory, *, description="")`` adds ``factory`` under ``name``. ``create_<kind>("name",
**kwargs)`` then calls ``factory(**kwargs)``, and ``create_<kind>("name:arg", **kwargs)`` calls
``factory("arg", **kwargs)`` (e.g. ``timm:convnext_base``, ``sd:/models/minisd``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("featinv")
hookimpl = pluggy.HookimplMarker("featinv")

Register = Callable[..., None]


@hookspec
def register_backbones(register: Register) -> None:
    """Called once when the backbone registry is built.

    ``register(prefix, factory)``: ``factory(model_name, layer=None, weights="pretrained",
    input_size=None, device="cpu") -> featinv.features.backbone.Backbone`` for specs ``prefix:model_name``
    (or ``factory(**kwargs)`` for a spec without a colon, e.g. an alias).
    """


@hookspec
def register_bases(register: Register) -> None:
    """Called once when the diffusion-base registry is built.

    ``register(prefix, factory)``: ``factory(path_or_id, device="cpu") -> DiffusionBase`` for specs
    like ``sd:/models/minisd`` or ``pixel:runs/base``.
    """


@hookspec
def register_encoders(register: Register) -> None:
    """Called once when the feature-encoder registry is built.

    ``register(name, factory)``: ``factory(in_channels=C, out_channels=C0, grid=(H, W), **config)`` returns
    a diffusers ``ModelMixin`` mapping ``[B, C, h, w]`` feature maps to ``[B, C0, H, W]``.
    """


@hookspec
def register_decomposers(register: Register) -> None:
    """Called once when the concept-decomposer registry is built.

    ``register(name, factory)``: ``factory(n_concepts=K, **options) -> featinv.concepts.base.Decomposer``.
    """


@hookspec
def register_analyses(register: Register) -> None:
    """Called once when the analysis registry is built.

    ``register(name, factory)``: ``factory(**options)`` returns an analysis object whose ``run(model,
    images, out_dir, ...)`` writes a figure and a JSON of its numbers.
    """


@hookspec
def register_commands(app: Any) -> None:
    """Called once when the CLI is assembled; ``app`` is the root ``typer.Typer`` to add commands to."""
