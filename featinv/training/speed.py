"""GPU speed settings of a training run: what each option resolves to on this device, and the optimizer.

The first H200 profile (``benchmarks/results/gpu-h200-2026-11-26/``) found the trainer host-bound: thousands of
small kernel launches, cuDNN NCHW→NHWC conversions around every convolution and a cast of every frozen weight
in every bf16 step. Each remedy is one option here; ``None``/``"auto"`` means "on where it helps" — on a CUDA
device — and a no-op on a CPU, so CPU runs (the demo, the tests) stay bit for bit what they were:

- ``channels_last``: NHWC weights and activations for the ControlNet, the frozen UNet/VAE and the backbone.
- ``frozen_precision``: the frozen networks stored in the training precision (bf16 weights under
  ``--mixed-precision bf16``), so autocast has no per-step weight casts; the trainable ControlNet keeps fp32
  master weights.
- ``optimizer_impl``: AdamW's fused kernel on CUDA (one launch for all parameters); CPUs keep torch's default.
- ``compile`` / ``compile_mode``: ``torch.compile`` of the denoiser (ControlNet + UNet) and the backbone;
  ``reduce-overhead`` adds CUDA graphs for small batches. Off by default: compiling takes minutes, which
  pays only for long runs; the loop reports that warm-up separately from samples/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from featinv.errors import FeatinvError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop")
FROZEN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SpeedSettings:
    """The speed options of one run as they apply on its device (``auto`` resolved)."""

    channels_last: bool = False
    frozen_dtype: torch.dtype = torch.float32
    optimizer: tuple[tuple[str, bool], ...] = ()   # AdamW keyword arguments (fused / foreach)
    compile: bool = False
    compile_mode: str | None = None

    def adamw_kwargs(self) -> dict[str, bool]:
        """The keyword arguments for ``torch.optim.AdamW`` (kept as a tuple so the settings stay hashable)."""
        return dict(self.optimizer)

    def describe(self) -> dict[str, Any]:
        """JSON-able, for the log line and ``train_state.json``."""
        return {"channels_last": self.channels_last, "frozen_precision": _name(self.frozen_dtype),
                "optimizer": self.adamw_kwargs() or "torch default", "compile": self.compile,
                "compile_mode": self.compile_mode}


def _name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def check_speed_options(config: Any) -> None:
    """One-line errors for bad values (called from the config's ``check``)."""
    if config.channels_last not in (None, True, False):
        raise FeatinvError(f"channels-last must be true, false or unset (auto), got {config.channels_last!r}")
    if config.compile_mode is not None and config.compile_mode not in COMPILE_MODES:
        raise FeatinvError(f"compile mode {config.compile_mode!r} unknown; use one of {', '.join(COMPILE_MODES)}")
    if config.compile_mode is not None and not config.compile:
        raise FeatinvError("--compile-mode needs --compile")
    if config.optimizer_impl not in OPTIMIZER_IMPLS:
        raise FeatinvError(f"optimizer implementation {config.optimizer_impl!r} unknown; use one of "
                           f"{', '.join(OPTIMIZER_IMPLS)}")
    frozen = getattr(config, "frozen_precision", "auto")
    if frozen not in FROZEN_PRECISIONS:
        raise FeatinvError(f"frozen precision {frozen!r} unknown; use one of {', '.join(FROZEN_PRECISIONS)}")
    if frozen in ("bf16", "fp16") and frozen != config.mixed_precision:
        raise FeatinvError(f"frozen precision {frozen} needs --mixed-precision {frozen} (the frozen networks run "
                           "under its autocast); use --frozen-precision auto or fp32")


def resolve_speed(config: Any, device: torch.device) -> SpeedSettings:
    """What the options mean on ``device``: ``auto`` turns a remedy on for CUDA and leaves a CPU untouched."""
    cuda = device.type == "cuda"
    frozen = getattr(config, "frozen_precision", "auto")
    if frozen == "auto":
        frozen = config.mixed_precision if cuda and config.mixed_precision in ("bf16", "fp16") else "fp32"
    channels_last = cuda if config.channels_last is None else bool(config.channels_last)
    return SpeedSettings(channels_last=channels_last, frozen_dtype=DTYPES[frozen],
                         optimizer=tuple(adamw_options(config.optimizer_impl, device).items()),
                         compile=bool(config.compile), compile_mode=config.compile_mode)


def fused_adamw_supported(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device``'s type (CUDA always; CPU since torch 2.4)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        return device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # pragma: no cover - torch < 2.2
        return device.type == "cuda"


def adamw_options(impl: str, device: torch.device) -> dict[str, bool]:
    """AdamW keyword arguments: ``auto`` = fused on CUDA, torch's default elsewhere (a CPU stays bit-identical);
    ``fused`` falls back to ``foreach`` where this torch has no fused kernel for the device."""
    if impl == "auto":
        return {"fused": True} if device.type == "cuda" and fused_adamw_supported(device) else {}
    if impl == "fused":
        return {"fused": True} if fused_adamw_supported(device) else {"foreach": True}
    if impl == "foreach":
        return {"foreach": True}
    return {"foreach": False}


def make_optimizer(params: list[torch.nn.Parameter], config: Any, settings: SpeedSettings) -> torch.optim.Optimizer:
    """The paper's AdamW with the implementation the settings chose."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **settings.adamw_kwargs())


def to_channels_last(modules: list[torch.nn.Module]) -> None:
    """NHWC weights (activations follow them through every convolution)."""
    for module in modules:
        module.to(memory_format=torch.channels_last)


def compile_modules(modules: list[torch.nn.Module], mode: str | None) -> None:
    """``nn.Module.compile`` in place: weights, ``state_dict`` keys and saving stay untouched."""
    for module in modules:
        module.compile(mode=mode)
