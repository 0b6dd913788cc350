"""The built-in ``py:package.module:factory`` backbones: a model from your own code (like ``uvicorn app:main``).

The factory is imported and called with no arguments; it returns the ``nn.Module`` alone, ``(module,
options)``, a dict with a ``"model"`` key plus options, or a ready Backbone (see
:mod:`featinv.features.custom` for the options: input_size, mean, std, patch_size, prefix_tokens,
classifier...). ``--input-size``/``--mean``/``--std`` given on the command line win over the factory's.
The module must be importable: installed, or on ``PYTHONPATH``, or in the current directory.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from featinv.errors import FeatinvError
from featinv.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    import torch

    from featinv.features.backbone import Backbone


def _import_factory(reference: str) -> Any:
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise FeatinvError(f"py:{reference} must look like py:package.module:factory (a module path, a colon and "
                           "the function that builds the model)")
    if "" not in sys.path and "." not in sys.path:  # like `python -m` and uvicorn: the working folder imports
        sys.path.append("")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FeatinvError(f"py:{reference}: cannot import {module_name!r} ({exc}); install it or add its folder "
                           "to PYTHONPATH") from None
    except Exception as exc:  # the user's module raised while importing
        raise FeatinvError(f"py:{reference}: importing {module_name!r} raised {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}; fix the module") from None
    factory: Any = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise FeatinvError(f"py:{reference}: module {module_name!r} has no attribute {attribute!r}; name the "
                               "function that builds the model")
        factory = getattr(factory, part)
    if not callable(factory):
        raise FeatinvError(f"py:{reference}: {attribute!r} is a {type(factory).__name__}, not a callable factory")
    return factory


def create_py_backbone(reference: str | None = None, layer: str | None = None, weights: str = "pretrained",
                       input_size: int | None = None, device: str | torch.device = "cpu",
                       mean: Any = None, std: Any = None) -> Backbone:
    """``py:package.module:factory`` -- the model a function of your own code builds."""
    from featinv.features.custom import from_factory_result

    if not reference:
        raise FeatinvError("py backbone needs a factory, e.g. py:mypackage.models:build")
    spec = f"py:{reference}"
    factory = _import_factory(reference)
    try:
        result = factory()
    except FeatinvError:
        raise
    except Exception as exc:
        raise FeatinvError(f"{spec}: the factory raised {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}; fix it") from None
    return from_factory_result(result, spec, layer=layer, weights=weights, device=device, input_size=input_size,
                               mean=mean, std=std)


@hookimpl
def register_backbones(register: Register) -> None:
    register("py", create_py_backbone,
             description="your own model: py:package.module:factory (a function returning an nn.Module)")
