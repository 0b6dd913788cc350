"""Layer outputs as NCHW feature maps: layouts (NCHW, NHWC, tokens with prefix tokens) and hook capture.

Whatever layout a layer emits -- NCHW, NHWC (Swin stages) or token sequences ``[B, N, C]`` with any
number of prefix tokens -- :func:`to_nchw` turns it into ``[B, C, h, w]`` in row-major grid order. What the
model's library knows (:class:`ModelKnowledge`) decides the layout; shapes are only checked against it.
Hooks live only inside a ``with`` block and are always removed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from featinv.errors import FeatinvError

__all__ = ["Layout", "ModelKnowledge", "NoSpatialGrid", "capture", "module_knowledge", "pool_features", "record_all",
           "resolve_layout", "to_nchw"]


@dataclass
class ModelKnowledge:
    """What the model's library knows about its layouts, so nothing has to be guessed.

    ``prefix_tokens``: class/distillation/register tokens in front of patch tokens.
    ``patch_grid(input_hw)``: the patch-token grid (h, w) for an input size, or None for pure CNNs.
    ``channels_last(path)``: True where the library declares NHWC outputs (Swin stages).
    ``preferred_layers``: canonical feature layers (timm's ``feature_info``), used to name the default.
    ``pre_pool(model, x)``: runs the model up to global pooling and returns that tensor (the default
    layer is the module that produced it).
    ``token_grids(input_hw)``: every grid a token layer may have (Swin-style stages that merge patches);
    the one whose size matches the token count is used. None: only ``patch_grid``.
    ``default_layer``: the canonical feature layer, named outright (no probe needed).
    ``forward(model, x)``: how to call the model (Hugging Face models take ``pixel_values=``).
    ``logits_of(output)``: the class logits in the model's output, or None when it has no classifier;
    None here means "a 2-D tensor output is the logits".
    ``unwrap(output)``: the tensor inside a layer's output (Hugging Face layers return tuples).
    """

    prefix_tokens: int = 0
    patch_grid: Callable[[tuple[int, int]], tuple[int, int]] | None = None
    channels_last: Callable[[str], bool] = field(default=lambda path: False)
    preferred_layers: tuple[str, ...] = ()
    pre_pool: Callable[[nn.Module, Tensor], Tensor] | None = None
    token_grids: Callable[[tuple[int, int]], Sequence[tuple[int, int]]] | None = None
    default_layer: str | None = None
    forward: Callable[[nn.Module, Tensor], Any] | None = None
    logits_of: Callable[[Any], Tensor | None] | None = None
    unwrap: Callable[[Any], Any] | None = None

    def run(self, model: nn.Module, x: Tensor) -> Any:
        """Call ``model`` on preprocessed ``x`` the way its library expects."""
        return model(x) if self.forward is None else self.forward(model, x)

    def logits(self, output: Any) -> Tensor | None:
        """The class logits in a forward output, or None (an encoder without a classifier)."""
        if self.logits_of is not None:
            return self.logits_of(output)
        return output if isinstance(output, Tensor) and output.ndim == 2 else None

    def layer_output(self, output: Any) -> Any:
        """The feature tensor inside a layer's raw hook output (the output itself unless ``unwrap`` says)."""
        return output if self.unwrap is None else self.unwrap(output)


def module_knowledge(patch_size: Any = None, prefix_tokens: int = 0, channels_last: bool = False,
                     classifier: bool = True) -> ModelKnowledge:
    """What a user says about a plain ``nn.Module`` (nobody else knows): its patch size and prefix tokens for
    token outputs, NHWC outputs, and whether a 2-D output is class logits; the default layer is the input
    of its last global pooling."""
    from featinv.validation import check_image_size

    patch_grid = None
    if patch_size is not None:
        ph, pw = check_image_size(patch_size, "patch_size") if not isinstance(patch_size, int) else (patch_size,) * 2

        def patch_grid(hw: tuple[int, int]) -> tuple[int, int]:
            return hw[0] // ph, hw[1] // pw
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
        raise FeatinvError(f"prefix_tokens must be a non-negative integer, got {prefix_tokens!r}")
    return ModelKnowledge(prefix_tokens=prefix_tokens, patch_grid=patch_grid,
                          channels_last=lambda path: bool(channels_last), pre_pool=_global_pool_input,
                          logits_of=None if classifier else (lambda output: None))


def _global_pool_input(model: nn.Module, x: Tensor) -> Tensor | None:
    """The tensor the model's last adaptive (global) pooling receives (None: the model has none, so the
    default layer is the last top-level module with a grid)."""
    pools = [m for m in model.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
    store: dict[str, Tensor] = {}
    handle = pools[-1].register_forward_pre_hook(lambda _m, inputs: store.__setitem__("x", inputs[0])) if pools else None
    try:
        model(x)
    finally:
        if handle is not None:
            handle.remove()
    return store.get("x")


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps to NCHW: ``kind`` is "NCHW", "NHWC" or "tokens"."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def describe(self) -> str:
        """Short label for tables: NCHW, NHWC or tokens+K (K prefix tokens dropped)."""
        return f"tokens+{self.prefix}" if self.kind == "tokens" else self.kind


class NoSpatialGrid(FeatinvError):
    """The layer's output is not a spatial feature map (a vector, windows, a tuple...)."""


# ----------------------------------------------------------------------------------------- layout

def _plausible_grid(grid: tuple[int, int], input_hw: tuple[int, int]) -> bool:
    """Whether (h, w) is the input downsampled by one integer stride (floor or ceil rounding)."""
    h, w = grid
    if h < 1 or w < 1 or h > input_hw[0] or w > input_hw[1]:
        return False
    ratio = input_hw[0] / h
    for stride in {math.floor(ratio), math.ceil(ratio), round(ratio)}:
        if stride < 1:
            continue
        ok_h = h in (input_hw[0] // stride, -(-input_hw[0] // stride))
        ok_w = w in (input_hw[1] // stride, -(-input_hw[1] // stride))
        if ok_h and ok_w:
            return True
    return False


def resolve_layout(shape: Sequence[int], input_hw: tuple[int, int], knowledge: ModelKnowledge,
                   path: str = "", batch: int | None = None) -> Layout:
    """Decide how an output of ``shape`` maps to NCHW, from the model's knowledge and the input size.

    4-D: the library's declared format (NHWC for Swin stages, NCHW otherwise) unless that format gives
    a grid the input size cannot produce and the other one does (e.g. channels-last MLPs inside ConvNeXt
    blocks). 3-D: a token sequence; the model's prefix-token count and patch grid must add up exactly.
    Anything else raises :class:`NoSpatialGrid` with the reason.
    """
    shape = tuple(int(s) for s in shape)
    where = f"layer {path!r}" if path else "this layer"
    if batch is not None and shape and shape[0] != batch:
        raise NoSpatialGrid(f"{where} outputs {list(shape)}, whose first axis is not the batch ({batch}) "
                            "(windows or flattened positions); pick an enclosing module, see `featinv layers SPEC`")
    if len(shape) == 4:
        nchw, nhwc = (shape[2], shape[3]), (shape[1], shape[2])
        first, second = ("NHWC", "NCHW") if knowledge.channels_last(path) else ("NCHW", "NHWC")
        grids = {"NCHW": nchw, "NHWC": nhwc}
        for kind in (first, second):
            if _plausible_grid(grids[kind], input_hw):
                return Layout(kind, grids[kind])
        raise NoSpatialGrid(f"{where} outputs {list(shape)}, which is no downsampled grid of the "
                            f"{input_hw[0]}x{input_hw[1]} input; pick another layer, see `featinv layers SPEC`")
    if len(shape) == 3:
        if knowledge.patch_grid is None:
            raise NoSpatialGrid(f"{where} outputs a sequence {list(shape)} but the model has no patch grid; "
                                "pick a layer with a [B, C, H, W] output, see `featinv layers SPEC`")
        grid = tuple(knowledge.patch_grid(input_hw))
        prefix = knowledge.prefix_tokens
        if shape[1] != prefix + grid[0] * grid[1] and knowledge.token_grids is not None:
            grid = next((tuple(g) for g in knowledge.token_grids(input_hw) if shape[1] == prefix + g[0] * g[1]), grid)
        if shape[1] != prefix + grid[0] * grid[1]:
            raise NoSpatialGrid(f"{where} outputs {shape[1]} tokens, not {prefix} prefix + {grid[0]}x{grid[1]} "
                                "patch tokens; pick a block output, see `featinv layers SPEC`")
        return Layout("tokens", (grid[0], grid[1]), prefix)
    raise NoSpatialGrid(f"{where} outputs {list(shape)}, which has no spatial grid (pooled vector or logits); "
                        "pick an earlier layer, see `featinv layers SPEC`")


def to_nchw(output: Tensor, layout: Layout) -> Tensor:
    """Apply ``layout``: NCHW as is, NHWC permuted, tokens without prefix reshaped row-major to the grid."""
    if layout.kind == "NCHW":
        return output
    if layout.kind == "NHWC":
        return output.permute(0, 3, 1, 2)
    if layout.kind == "tokens":
        batch, _, channels = output.shape
        h, w = layout.grid
        return output[:, layout.prefix:].reshape(batch, h, w, channels).permute(0, 3, 1, 2)
    raise ValueError(f"unknown layout kind {layout.kind!r}")


def pool_features(fmap: Tensor) -> Tensor:
    """The paper's pooled baseline: mean over positions, copied back to every position of the grid."""
    return fmap.mean(dim=(2, 3), keepdim=True).expand_as(fmap).contiguous()


def grid_stride(input_h: int, grid_h: int) -> int:
    """The integer downsampling factor from the input height to the grid height (at least 1)."""
    return max(1, round(input_h / int(grid_h)))


def tensor_shape(output: Any) -> tuple[int, ...] | None:
    """A hook output's shape, or None when it is not a tensor (tuples, dicts: not a feature map)."""
    return tuple(output.shape) if isinstance(output, Tensor) else None


# ----------------------------------------------------------------------------------------- hooks

class StopForward(Exception):
    """Raised by a capture hook to leave the forward pass once the layer has run."""


@contextmanager
def capture(module: nn.Module, stop: bool = False) -> Iterator[dict[str, Any]]:
    """Record ``module``'s output in the yielded dict under "output"; with ``stop`` end the forward there.

    The hook exists only inside the ``with`` block; :class:`StopForward` is swallowed on exit.
    """
    store: dict[str, Any] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        store["output"] = output  # a module called several times (a shared ReLU) keeps its last output
        store["calls"] = store.get("calls", 0) + 1
        if stop:
            raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield store
    except StopForward:
        pass
    finally:
        handle.remove()


@contextmanager
def record_all(model: nn.Module) -> Iterator[list[tuple[str, Any, Any]]]:
    """Record (path, first input, output) for every submodule call in call order; hooks removed on exit."""
    calls: list[tuple[str, Any, Any]] = []
    handles = []

    def make_hook(path: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: Any, output: Any) -> None:
            first = inputs[0] if isinstance(inputs, tuple) and inputs else None
            calls.append((path, first, output))
        return hook

    try:
        for path, module in model.named_modules():
            if path:
                handles.append(module.register_forward_hook(make_hook(path)))
        yield calls
    finally:
        for handle in handles:
            handle.remove()
