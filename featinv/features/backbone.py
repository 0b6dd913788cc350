"""Backbones: a classifier cut at one layer, returning that layer's feature map in NCHW.

A :class:`Backbone` wraps any ``torch.nn.Module`` classifier plus what its library knows about it
(:class:`ModelKnowledge`: prefix tokens, patch grid, channels-last stages, input config). Layers are
module paths (``stages.3``, ``layer4``, ``blocks.11``). Features are captured with a forward hook that
lives only inside a ``with`` block and, for :meth:`Backbone.features`, stops the forward pass right
after the layer, so the rest of the network never runs.

Whatever layout the layer emits -- NCHW, NHWC (Swin stages) or token sequences ``[B, N, C]`` with any
number of prefix tokens -- :func:`to_nchw` turns it into ``[B, C, h, w]`` in row-major grid order.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featinv.errors import FeatinvError, closest
from featinv.features.info import IMAGENET_MEAN, IMAGENET_STD, FeatureInfo, LayerInfo, Preprocessing
from featinv.features.layout import (
    Layout,
    ModelKnowledge,
    NoSpatialGrid,
    capture,
    grid_stride,
    module_knowledge,
    pool_features,
    record_all,
    resolve_layout,
    tensor_shape,
    to_nchw,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "FeatureInfo",
    "LayerInfo",
    "Layout",
    "ModelKnowledge",
    "Preprocessing",
    "backbone",
    "capture",
    "list_layers",
    "pool_features",
    "resolve_layout",
    "to_nchw",
]

# ----------------------------------------------------------------------------------------- backbone

_LAYOUT_ONLY = {"Identity", "Permute", "Flatten", "Dropout", "DropPath", "StochasticDepth"}


class Backbone:
    """A frozen classifier cut at ``layer``: preprocessing, NCHW features, logits, layer listing."""

    def __init__(self, spec: str, model: nn.Module, layer: str | None, preprocessing: Preprocessing,
                 knowledge: ModelKnowledge | None = None, device: str | torch.device = "cpu",
                 weights: str = "pretrained") -> None:
        self.spec = spec
        self.weights = weights  # what was loaded, so a saved run can rebuild the same backbone
        self.overrides: dict[str, Any] = {}  # mean/std the user gave instead of the model's own
        self.model = model.eval().requires_grad_(False)
        self.preprocessing = preprocessing
        self.knowledge = knowledge or ModelKnowledge()
        self.device = torch.device(device)
        self.model.to(self.device)
        self._modules = dict(self.model.named_modules())
        self._modules.pop("", None)
        self._default_layer: str | None = None
        self.layer = self._check_layer(layer) if layer is not None else self.default_layer
        self.info = self._probe_info()

    @classmethod
    def from_module(cls, module: nn.Module, layer: str | None = None, *, input_size: Any = None, mean: Any = None,
                    std: Any = None, interpolation: str = "bilinear", patch_size: Any = None, prefix_tokens: int = 0,
                    channels_last: bool = False, classifier: bool = True, spec: str | None = None,
                    weights: str = "none", device: str | torch.device = "cpu") -> Backbone:
        """Wrap a user's ``nn.Module`` (frozen, eval mode) cut at ``layer`` (None: the input of its last global pooling).

        ``input_size`` (default 224), ``mean``/``std`` (default ImageNet) and ``interpolation`` are its
        preprocessing; ``patch_size`` and ``prefix_tokens`` describe token outputs ``[B, N, C]`` (a ViT with a
        class token: ``patch_size=16, prefix_tokens=1``); ``channels_last`` marks NHWC 4-D outputs;
        ``classifier=False`` says a 2-D output is an embedding, not class logits.
        """
        from featinv.validation import check_choice, check_image_size, check_normalisation

        if not isinstance(module, nn.Module):
            raise FeatinvError(f"expected a torch.nn.Module to wrap, got {type(module).__name__}")
        check_choice(interpolation, "interpolation", ("bilinear", "bicubic", "nearest"))
        norm = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **check_normalisation(mean, std)}
        prep = Preprocessing(check_image_size(input_size if input_size is not None else 224, "input_size"),
                             interpolation=interpolation, **norm)
        knowledge = module_knowledge(patch_size, prefix_tokens, channels_last, classifier)
        name = spec or f"module:{type(module).__module__}.{type(module).__qualname__}"
        return cls(name, module, layer, prep, knowledge, device=device, weights=weights)

    @property
    def default_layer(self) -> str:
        """The last spatial map before global pooling (found by one probe forward, on first use)."""
        if self._default_layer is None:
            self._default_layer = self.knowledge.default_layer or self._find_default_layer()
        return self._default_layer

    @property
    def has_classifier(self) -> bool:
        """Whether the model ends in a classifier (an encoder such as DINOv2 or a CLIP tower does not)."""
        return self.info.num_classes > 0

    def _run(self, x: Tensor) -> Any:
        return self.knowledge.run(self.model, x)

    # -- construction helpers
    def _dummy(self) -> Tensor:
        h, w = self.preprocessing.input_size
        return torch.zeros(1, 3, h, w, device=self.device)

    def _check_layer(self, layer: str) -> str:
        if layer not in self._modules:
            hints = closest(layer, self._modules, n=5)
            hint = f"closest: {', '.join(hints)}; " if hints else ""
            raise FeatinvError(f"{self.spec} has no layer {layer!r}; {hint}run `featinv layers {self.spec}` "
                               "to list every layer")
        return layer

    def _find_default_layer(self) -> str:
        """The module producing the last spatial map before global pooling (the paper's choice)."""
        x = self._dummy()
        with torch.no_grad(), record_all(self.model) as calls:
            if self.knowledge.pre_pool is not None:
                target = self.knowledge.pre_pool(self.model, x)
            else:
                self._run(x)
                target = None
        if target is None:  # fall back: last top-level module with a spatial output
            for path, _, output in reversed(calls):
                if "." not in path and self._layout_or_none(path, output) is not None:
                    return path
            raise FeatinvError(f"{self.spec} has no layer with a spatial feature map; pass --layer explicitly")
        while True:
            # skip pass-through and layout-only modules: follow the tensor back to whoever made it
            made = [(p, inp) for p, inp, out in calls if out is target and inp is not target]
            real = [p for p, _ in made if type(self._modules[p]).__name__ not in _LAYOUT_ONLY]
            if real:
                break
            if not made or not isinstance(made[-1][1], Tensor):
                raise FeatinvError(f"could not find the layer before pooling in {self.spec}; pass --layer explicitly")
            target = made[-1][1]
        preferred = [p for p in real if p in self.knowledge.preferred_layers]
        if preferred:
            return preferred[-1]
        path = min(real, key=lambda p: (p.count("."), real.index(p)))
        # descend through plain containers of heterogeneous parts (torchvision's `features`)
        while type(self._modules[path]) in (nn.Sequential, nn.ModuleList):
            children = list(self._modules[path].named_children())
            if len({type(c) for _, c in children}) <= 1:
                break
            child = f"{path}.{children[-1][0]}"
            if child not in real:
                break
            path = child
        return path

    def _layout_or_none(self, path: str, output: Any) -> Layout | None:
        shape = tensor_shape(self.knowledge.layer_output(output))
        if shape is None:
            return None
        try:
            return resolve_layout(shape, self.preprocessing.input_size, self.knowledge, path, 1)
        except NoSpatialGrid:
            return None

    def _probe_info(self) -> FeatureInfo:
        x = self._dummy()
        with torch.no_grad(), capture(self._modules[self.layer]) as store:
            logits = self.knowledge.logits(self._run(x))
        self._stop_early = store.get("calls", 0) == 1  # a module called twice must see the whole pass
        fmap = self._to_nchw(store, x)
        h, w = self.preprocessing.input_size
        return FeatureInfo(spec=self.spec, layer=self.layer, channels=int(fmap.shape[1]),
                           grid=(int(fmap.shape[2]), int(fmap.shape[3])), stride=grid_stride(h, fmap.shape[2]),
                           input_size=(h, w), num_classes=int(logits.shape[-1]) if logits is not None else 0)

    # -- public API
    def __repr__(self) -> str:
        i = self.info
        return (f"Backbone({self.spec!r}, layer={self.layer!r}, {i.channels}x{i.grid[0]}x{i.grid[1]}, "
                f"stride {i.stride}, input {i.input_size[0]}x{i.input_size[1]})")

    def to(self, device: str | torch.device) -> Backbone:
        """Move the model to ``device``; features and logits then run there (returns self)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def normalize(self, images01: Tensor, resize: str | None = None) -> Tensor:
        """Differentiable: resize [B,3,h,w] in [0,1] to the input size and apply the model's mean/std.

        ``resize``: the interpolation, ``bilinear`` or ``bicubic`` (the paper resizes its 256 px reconstructions
        bilinearly); None or ``model``: the model's own (bicubic for most timm models).
        """
        if images01.ndim == 3:
            images01 = images01.unsqueeze(0)
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise FeatinvError(f"images must be [B, 3, H, W] in [0, 1], got {list(images01.shape)}; "
                               "convert to RGB float tensors first")
        x = images01.to(self.device, torch.float32)
        size = self.preprocessing.input_size
        if tuple(x.shape[-2:]) != size:
            mode = self.preprocessing.interpolation if resize in (None, "model") else resize
            if mode not in ("bilinear", "bicubic", "nearest"):
                raise FeatinvError(f"resize mode {resize!r} unknown; use bilinear, bicubic or model")
            kwargs = {"align_corners": False, "antialias": True} if mode in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=size, mode=mode, **kwargs)
            if mode == "bicubic":
                x = x.clamp(0, 1)
        mean = torch.tensor(self.preprocessing.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def preprocess(self, images: Any) -> Tensor:
        """Image(s) of any kind -> normalised [B,3,H,W] at the input size.

        Takes a [B,3,H,W]/[3,H,W] tensor in [0,1] (or integers in 0..255), PIL images, numpy arrays
        (H×W×C uint8 or floats in [0,1], grayscale, RGBA; a [B,H,W,C] array is a batch), file paths, or a
        list mixing these (converted by :func:`featinv.data.image_to_tensor01`). The largest central crop
        with the input's aspect ratio is kept (the whole short side), then resized with the model's
        interpolation -- the same resize :meth:`normalize` applies.
        """
        import numpy as np

        from featinv.data import image_to_tensor01

        if isinstance(images, Tensor) and images.ndim in (3, 4):
            if images.is_floating_point() and images.numel() and float(images.max()) > 1.5:
                raise FeatinvError("tensor images must be floats in [0, 1] (got values above 1); divide by 255 first")
            if not images.is_floating_point():
                images = images.float() / 255.0
            if images.ndim == 3:
                images = images[None]
            return self.normalize(self._center_crop(images))
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise FeatinvError("no images given to preprocess; pass at least one image")
        return torch.cat([self.normalize(self._center_crop(image_to_tensor01(img)[None])) for img in images])

    def _center_crop(self, x: Tensor) -> Tensor:
        """The largest centred crop with the model's input aspect ratio (resizing is the model's job)."""
        from featinv.data import center_crop_box

        th, tw = self.preprocessing.input_size
        left, top, right, bottom = center_crop_box(int(x.shape[-1]), int(x.shape[-2]), (Fraction(tw, th),) * 2)
        return x[..., top:bottom, left:right]

    def _to_nchw(self, store: dict[str, Any], x: Tensor) -> Tensor:
        if "output" not in store:
            raise FeatinvError(f"layer {self.layer!r} of {self.spec} does not run in the forward pass; "
                               f"pick another, see `featinv layers {self.spec}`")
        output = self.knowledge.layer_output(store["output"])
        shape = tensor_shape(output)
        if shape is None:
            raise NoSpatialGrid(f"layer {self.layer!r} of {self.spec} returns {type(output).__name__}, not a tensor; "
                                f"pick one of its submodules, see `featinv layers {self.spec}`")
        layout = resolve_layout(shape, (int(x.shape[-2]), int(x.shape[-1])), self.knowledge, self.layer,
                                int(x.shape[0]))
        return to_nchw(output, layout).float().contiguous()

    def to_nchw(self, output: Tensor, x: Tensor) -> Tensor:
        """Turn a raw output of the layer (or its gradient) for input ``x`` into [B,C,h,w] float32.

        For code that hooks the layer itself (e.g. Grad-CAM needs the layer output's gradient).
        """
        return self._to_nchw({"output": output}, x)

    def features(self, x: Tensor, pooled: bool = False) -> Tensor:
        """The layer's feature map [B,C,h,w] for preprocessed ``x``; the rest of the network does not run."""
        x = self._model_input(x)
        with capture(self._modules[self.layer], stop=self._stop_early) as store:
            self._run(x)
        fmap = self._to_nchw(store, x)
        return pool_features(fmap) if pooled else fmap

    def logits(self, x: Tensor) -> Tensor:
        """The full classifier's logits [B, num_classes] for preprocessed ``x``."""
        self.require_classifier("class logits")
        return self.knowledge.logits(self._run(self._model_input(x))).float()

    def require_classifier(self, what: str) -> None:
        """Refuse, in one line, an operation that needs class logits on a backbone without a classifier."""
        if not self.has_classifier:
            raise FeatinvError(f"{self.spec} has no classifier head, so {what} is not available; use a model "
                               "with one (e.g. a *ForImageClassification) or leave this option out")

    def features_and_logits(self, x: Tensor, pooled: bool = False) -> tuple[Tensor, Tensor | None]:
        """Features and logits from one forward pass (logits None when the model has no classifier)."""
        x = self._model_input(x)
        with capture(self._modules[self.layer]) as store:
            logits = self.knowledge.logits(self._run(x))
        fmap = self._to_nchw(store, x)
        return (pool_features(fmap) if pooled else fmap), (logits.float() if logits is not None else None)

    def _model_input(self, x: Tensor) -> Tensor:
        """``x`` on the model's device, in its weights' precision when they are not fp32 (a trainer may store a
        frozen backbone in bf16); features and logits always come back as fp32."""
        x = x.to(self.device)
        weight = next(self.model.parameters(), None)
        if weight is not None and weight.dtype != torch.float32 and x.is_floating_point():
            x = x.to(weight.dtype)
        return x

    def layers(self) -> list[LayerInfo]:
        """Every hookable module path with its NCHW output shape and stride (one probe forward)."""
        x = self._dummy()
        with torch.no_grad(), record_all(self.model) as calls:
            self._run(x)
        last = {path: self.knowledge.layer_output(output) for path, _, output in calls}  # a module called twice keeps its last output
        h = self.preprocessing.input_size[0]
        infos = []
        for path, module in self._modules.items():
            kind, is_default = type(module).__name__, path == self.default_layer
            layout = self._layout_or_none(path, last[path]) if path in last else None
            if layout is None:
                shape = tensor_shape(last.get(path))
                reason = ("not called in forward" if path not in last else
                          f"no grid: {list(shape)}" if shape else f"returns {type(last[path]).__name__}")
                infos.append(LayerInfo(path, kind, None, None, reason, is_default))
                continue
            fmap = to_nchw(last[path], layout)
            infos.append(LayerInfo(path, kind, (int(fmap.shape[1]), int(fmap.shape[2]), int(fmap.shape[3])),
                                   grid_stride(h, fmap.shape[2]), layout.describe(), is_default))
        return infos


def backbone(spec: str | nn.Module, layer: str | None = None, weights: str = "pretrained",
             input_size: int | None = None, device: str | torch.device = "cpu", *,
             mean: Any = None, std: Any = None, **module_options: Any) -> Backbone:
    """Build a backbone from a spec such as ``timm:convnext_base``, ``hf:/path/to/model`` or
    ``py:package.module:factory``, or wrap your own ``nn.Module`` given as ``spec``.

    ``weights``: "pretrained" (the library's own download/cache), "none" (seeded random init) or a
    local .pth/.pt/.safetensors file. ``layer`` is a module path; None picks the last spatial map.
    ``mean``/``std`` replace the model's normalisation. For a module, ``module_options`` are
    :func:`featinv.features.custom.wrap_module`'s (``patch_size``, ``prefix_tokens``, ``classifier``...).
    """
    from featinv.validation import MAX_INPUT_SIZE, check_count, check_device, check_normalisation

    check_device(device)  # before any model is built: a missing GPU is one line, not a driver error
    if isinstance(input_size, int):
        check_count(input_size, "input size", low=8, high=MAX_INPUT_SIZE)
    if isinstance(spec, nn.Module):
        return Backbone.from_module(spec, layer, input_size=input_size, mean=mean, std=std, device=device,
                                    **module_options)
    if not isinstance(spec, str) or not spec:
        raise FeatinvError("backbone spec must be a string like timm:convnext_base or torchvision:resnet50, "
                           "or a torch.nn.Module")
    if module_options:
        raise FeatinvError(f"options {', '.join(sorted(module_options))} only apply to a wrapped nn.Module, "
                           f"not to the spec {spec}")
    from featinv.registry import create_backbone

    extra = {"mean": mean, "std": std} if spec.startswith("py:") else {}
    model = create_backbone(spec, layer=layer, weights=weights, input_size=input_size, device=device, **extra)
    if mean is not None or std is not None:
        from dataclasses import replace

        given = check_normalisation(mean, std)
        model.preprocessing = replace(model.preprocessing, **given)
        model.overrides = {key: list(value) for key, value in given.items()}  # recorded in a run's config
    return model


def list_layers(spec: str, input_size: int | None = None, weights: str = "none", layer: str | None = None,
                device: str | torch.device = "cpu", mean: Any = None,
                std: Any = None) -> tuple[Backbone, list[LayerInfo]]:
    """Every hookable layer of ``spec`` with its NCHW output shape and stride (behind `featinv layers`).

    Shapes do not depend on the weights, so random init (no download) is the default. ``layer`` is
    checked (close names suggested) and becomes the backbone's layer.
    """
    model = backbone(spec, layer=layer, weights=weights, input_size=input_size, device=device, mean=mean, std=std)
    return model, model.layers()
