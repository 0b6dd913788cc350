"""The small records a backbone describes itself with: its preprocessing, its chosen layer's output
(:class:`FeatureInfo`) and every hookable layer (:class:`LayerInfo`). Plain data, no torch."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FeatureInfo", "LayerInfo", "Preprocessing"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureInfo:
    """What a backbone's chosen layer produces at the backbone's input size."""

    spec: str
    layer: str
    channels: int
    grid: tuple[int, int]
    stride: int
    input_size: tuple[int, int]
    num_classes: int


@dataclass(frozen=True)
class LayerInfo:
    """One hookable module: its output as NCHW ``shape`` (C, h, w) and stride, or why it has no grid."""

    path: str
    type: str
    shape: tuple[int, int, int] | None
    stride: int | None
    layout: str  # "NCHW", "NHWC", "tokens+K" (K prefix tokens) or the reason there is no grid
    is_default: bool = False

    @property
    def spatial(self) -> bool:
        """Whether the layer has a spatial grid (and can be used as a feature layer)."""
        return self.shape is not None


@dataclass(frozen=True)
class Preprocessing:
    """The model's own input config: size (H, W), mean/std and resize interpolation."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"
