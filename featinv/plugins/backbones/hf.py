"""The built-in ``hf:`` backbones: Hugging Face ``transformers`` vision models (ViT, DINOv2, CLIP/SigLIP
vision towers, ConvNeXt, Swin and fine-tunes of them).

``hf:/path/to/folder`` loads a model saved with ``save_pretrained``; ``hf:ORG/NAME`` goes through the
library's own cache (downloaded on first use, never when offline). Everything comes from the model and
its saved files, nothing is guessed: prefix tokens are the model's class/distillation/register token
parameters, the patch grid is ``input / patch_size`` (halved per Swin stage), layers that return tuples
give their first tensor, preprocessing is the saved ``preprocessor_config.json`` (crop or resize size,
mean/std, resample) and the classifier head, when there is one, gives the logits.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featinv.errors import FeatinvError
from featinv.features.weights import apply_state_dict, offline_error, read_state_dict, seeded
from featinv.hookspecs import Register, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from featinv.features.backbone import Backbone, ModelKnowledge, Preprocessing

PROCESSOR_FILE = "preprocessor_config.json"
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL codes in image-processor configs
_PREFIX_PARAMETERS = ("cls_token", "class_embedding", "distillation_token")


def _is_path_like(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") != 1 or os.sep != "/" and os.sep in name


def _source(name: str) -> tuple[str, bool]:
    """(folder or hub id, whether it is a local folder); a missing folder is one line."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FeatinvError(f"hf:{name} has no config.json; pass a folder written by model.save_pretrained(DIR)")
        return str(folder), True
    if _is_path_like(name) or folder.exists():
        raise FeatinvError(f"hf:{name}: folder {folder} does not exist; pass a folder written by "
                           "model.save_pretrained(DIR) or a hub id ORG/NAME")
    return name, False


def _model_class(config: Any) -> Any:
    """The architecture the config was saved from (e.g. ViTForImageClassification), else AutoModel."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _vision_part(model: nn.Module) -> nn.Module:
    """A full CLIP/SigLIP model (text and vision) -> its vision tower, which takes pixel_values alone."""
    tower = getattr(model, "vision_model", None)
    if tower is not None and "Vision" not in type(model).__name__:
        return tower
    return model


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" bar from transformers (featinv prints its own progress); restored after."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _load(spec: str, source: str, local: bool, weights: str) -> nn.Module:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=local or None)
    except Exception as exc:
        if local:
            raise FeatinvError(f"{spec}: cannot read its config.json ({type(exc).__name__}); pass a folder written "
                               "by model.save_pretrained(DIR)") from None
        raise offline_error(spec, exc, "~/.cache/huggingface/hub") from None
    cls = _model_class(config)
    if weights == "pretrained":
        try:
            with _quiet_loading():
                return cls.from_pretrained(source)
        except Exception as exc:
            if local:
                raise FeatinvError(f"{spec}: cannot load the model ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
            raise offline_error(spec, exc, "~/.cache/huggingface/hub") from None
    model = seeded(lambda: cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config))
    if weights != "none":
        if not Path(weights).exists():
            raise FeatinvError(f"weights {weights!r} is neither 'pretrained', 'none' nor an existing file; "
                               "pass one of those")
        apply_state_dict(model, read_state_dict(weights), str(weights), spec)
    return model


def _processor_config(source: str, local: bool) -> dict[str, Any]:
    """The saved image-processor settings ({} when the model was saved without one)."""
    if local:
        path = Path(source) / PROCESSOR_FILE
        found = str(path) if path.is_file() else None
    else:
        from transformers.utils import cached_file

        try:
            found = cached_file(source, PROCESSOR_FILE, _raise_exceptions_for_missing_entries=False)
        except Exception:  # offline and not cached: the model config's image size is used
            found = None
    if not found:
        return {}
    try:
        data = json.loads(Path(found).read_text())
    except (OSError, ValueError):
        raise FeatinvError(f"{found} is not valid JSON; fix or delete it") from None
    return data if isinstance(data, dict) else {}


def _hw(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    if isinstance(value, dict) and "shortest_edge" in value:
        return (int(value["shortest_edge"]),) * 2
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    return None


def _preprocessing(config: Any, processor: dict[str, Any], input_size: int | None) -> Preprocessing:
    """Input size (crop size, else resize size, else the config's image_size), mean/std and resample."""
    from featinv.features.backbone import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    size = (input_size, input_size) if input_size else None
    if size is None and processor.get("do_center_crop"):
        size = _hw(processor.get("crop_size"))
    size = size or _hw(processor.get("size")) or _hw(getattr(config, "image_size", None)) or (224, 224)
    normalize = processor.get("do_normalize", bool(processor))
    mean = tuple(float(v) for v in processor.get("image_mean", IMAGENET_MEAN)) if normalize else (0.0,) * 3
    std = tuple(float(v) for v in processor.get("image_std", IMAGENET_STD)) if normalize else (1.0,) * 3
    interpolation = _RESAMPLE.get(processor.get("resample"), "bilinear") if processor else "bilinear"
    return Preprocessing(size, mean, std, interpolation)  # type: ignore[arg-type]


def _prefix_tokens(model: nn.Module) -> int:
    """Class, distillation and register tokens, counted from the model's own token parameters."""
    count = 0
    for name, parameter in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _PREFIX_PARAMETERS:
            count += 1
        elif leaf == "register_tokens":
            count += int(parameter.shape[-2])
    return count


def _first_tensor(output: Any) -> Any:
    """A layer's feature tensor: itself, the first tensor of a tuple, or a model output's first field."""
    from torch import Tensor

    if isinstance(output, Tensor):
        return output
    values = list(output.values()) if isinstance(output, dict) else list(output) if isinstance(output, (tuple, list)) else []
    return values[0] if values and isinstance(values[0], Tensor) else output


def _logits_of(output: Any) -> Tensor | None:
    logits = getattr(output, "logits", None)
    return logits if logits is not None and logits.ndim == 2 else None


def _knowledge(model: nn.Module, config: Any, input_size: tuple[int, int]) -> ModelKnowledge:
    from featinv.features.backbone import ModelKnowledge

    patch = getattr(config, "patch_size", None)
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch) if patch else (None, None)
    patch_grid = token_grids = None
    if ph:
        def patch_grid(hw: tuple[int, int]) -> tuple[int, int]:
            return hw[0] // ph, hw[1] // pw
    depths = getattr(config, "depths", None)
    if ph and depths and "swin" in str(getattr(config, "model_type", "")):  # stages merge 2x2 patches each
        def token_grids(hw: tuple[int, int]) -> list[tuple[int, int]]:
            return [(hw[0] // (ph * 2 ** k), hw[1] // (pw * 2 ** k)) for k in range(len(depths) + 1)]
    native = _hw(getattr(config, "image_size", None))
    takes_interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    interpolate = takes_interpolate and native is not None and tuple(native) != tuple(input_size)

    def forward(m: nn.Module, x: Tensor) -> Any:
        return m(pixel_values=x, interpolate_pos_encoding=True) if interpolate else m(pixel_values=x)

    return ModelKnowledge(prefix_tokens=_prefix_tokens(model), patch_grid=patch_grid, token_grids=token_grids,
                          forward=forward, logits_of=_logits_of, unwrap=_first_tensor)


def _last_block(model: nn.Module, knowledge: ModelKnowledge, input_size: tuple[int, int]) -> str | None:
    """The last block of the model's main block list (ViT layers, ConvNeXt/Swin stages) with a grid."""
    import torch
    from torch import nn

    from featinv.features.layout import NoSpatialGrid, record_all, resolve_layout, tensor_shape

    modules = dict(model.named_modules())
    with torch.no_grad(), record_all(model) as calls:
        knowledge.run(model, torch.zeros(1, 3, *input_size))
    chosen = None
    for path, _, output in calls:  # completion order: a stage finishes after the blocks inside it
        parent, _, index = path.rpartition(".")
        if not index.isdigit() or not isinstance(modules.get(parent), nn.ModuleList):
            continue
        shape = tensor_shape(knowledge.layer_output(output))
        try:
            if shape is not None:
                resolve_layout(shape, input_size, knowledge, path, 1)
                chosen = path
        except NoSpatialGrid:
            continue
    return chosen


def create_hf_backbone(name: str | None = None, layer: str | None = None, weights: str = "pretrained",
                       input_size: int | None = None, device: str | torch.device = "cpu") -> Backbone:
    """``hf:/path/to/folder`` or ``hf:ORG/NAME`` -- a transformers vision model, classifier head optional."""
    from featinv.features.backbone import Backbone

    if not name:
        raise FeatinvError("hf backbone needs a folder or hub id, e.g. hf:/path/to/model or hf:facebook/dinov2-small")
    source, local = _source(name)
    spec = f"hf:{Path(source).resolve()}" if local else f"hf:{name}"  # a run reloads it from any folder
    model = _vision_part(_load(spec, source, local, weights))
    config = model.config
    prep = _preprocessing(config, _processor_config(source, local), input_size)
    knowledge = _knowledge(model, config, prep.input_size)
    knowledge.default_layer = _last_block(model, knowledge, prep.input_size)
    return Backbone(spec, model, layer, prep, knowledge, device=device, weights=weights)


@hookimpl
def register_backbones(register: Register) -> None:
    register("hf", create_hf_backbone,
             description="a transformers vision model: hf:/path/to/saved/model or hf:ORG/NAME (ViT, DINOv2, CLIP...)")
