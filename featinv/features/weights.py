"""Building a classifier with the weights a user asked for: ``"pretrained"``, ``"none"`` or a file.

Shared by every backbone factory (the built-in ``timm`` and ``torchvision`` plugins and third-party ones):
reading a state dict from any common format, loading it by name or by order, a seeded random init so
``weights="none"`` is the same model in every process, and the one error message for missing downloads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featinv.errors import FeatinvError

if TYPE_CHECKING:
    from torch import Tensor, nn

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A state dict from a .safetensors/.pth/.pt file (unwrapping ``state_dict``/``model`` and ``module.``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FeatinvError(f"weights file {path} does not exist; pass 'pretrained', 'none' or an existing file")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise FeatinvError(f"weights file {path} has suffix {path.suffix or '(none)'}; use one of "
                           f"{', '.join(WEIGHT_SUFFIXES)}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is a bad file, not a bug
        raise FeatinvError(f"cannot read weights file {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                           "save a plain state dict with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise FeatinvError(f"weights file {path} holds a {type(state).__name__}, not a state dict; "
                           "save it with torch.save(model.state_dict(), path)")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise FeatinvError(f"weights file {path} contains no tensors; save it with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in tensors):  # saved from DataParallel / DDP
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


_SAID: set[str] = set()


def _say_once(line: str) -> None:
    """A one-line notice on stderr, once per process (a backbone is often rebuilt several times per command)."""
    if line not in _SAID:
        _SAID.add(line)
        from featinv.console import err_console

        err_console.print(line, highlight=False, markup=False, soft_wrap=True)


def apply_state_dict(model: nn.Module, state: dict[str, Tensor], source: str, spec: str) -> str:
    """Load ``state`` into ``model`` by name, or by order when names differ but every shape matches in order.

    Nothing is loaded unless every tensor fits; returns "name" or "order" (how it was matched). A load by
    order (e.g. the TensorFlow-ported lite0 weights, whose names differ from timm's) is stated in a one-line
    notice: same-shaped tensors could be swapped without any error, so the user should know names went unchecked.
    """
    own = model.state_dict()
    if set(state) == set(own):
        wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if wrong:
            k = wrong[0]
            raise FeatinvError(f"{source} does not fit {spec}: {len(wrong)} tensors have other shapes (e.g. {k}: "
                               f"{list(state[k].shape)} vs {list(own[k].shape)}); use weights of the same architecture")
        model.load_state_dict(state)
        return "name"
    if len(state) == len(own) and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), own.values(),
                                                                                        strict=True)):
        model.load_state_dict(dict(zip(own, state.values(), strict=True)))
        _say_once(f"note: {source} names its tensors differently from {spec}, so its {len(state)} tensors were "
                  "loaded by position (order and shapes match; names were not checked)")
        return "order"
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    raise FeatinvError(f"{source} does not fit {spec}: {len(missing)} missing tensors (e.g. {missing[:2]}), "
                       f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}) and names/shapes do not line up in "
                       "order; use weights saved from the same architecture")


def offline_error(spec: str, exc: BaseException, cache: str) -> FeatinvError:
    """The one message for pretrained weights that cannot be fetched: where they are cached and the alternatives."""
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
    return FeatinvError(f"could not load the pretrained weights of {spec} ({reason}); they are downloaded on first "
                        f"use and cached in {cache}: run once with network access, or pass --weights PATH to a "
                        "local .pth/.safetensors file, or --weights none for random init")


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Random init with a fixed seed, so weights='none' gives the same model in every process."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def build_with_weights(spec: str, weights: str, random_init: Callable[[], nn.Module],
           pretrained: Callable[[], nn.Module]) -> tuple[nn.Module, str]:
    """Build for weights 'pretrained' | 'none' | file path; returns the model and the weights used."""
    if weights == "pretrained":
        return pretrained(), weights
    if weights == "none":
        return seeded(random_init), weights
    if not isinstance(weights, (str, os.PathLike)) or not Path(weights).exists():
        raise FeatinvError(f"weights {weights!r} is neither 'pretrained', 'none' nor an existing file; "
                           "pass one of those")
    state = read_state_dict(weights)
    model = seeded(random_init)
    apply_state_dict(model, state, str(weights), spec)
    return model, str(weights)
