"""A backbone plugin: ``example-cnn:small`` / ``example-cnn:base``, a small CNN standing in for your classifier."""

from __future__ import annotations

import torch
from torch import nn

from featinv.errors import FeatinvError
from featinv.features.backbone import Backbone, ModelKnowledge, Preprocessing
from featinv.features.weights import build_with_weights
from featinv.hookspecs import Register, hookimpl

VARIANTS = {"small": 8, "base": 16}


class TinyCNN(nn.Module):
    """A stem, two stages (stride 8 in total), global pooling and a head."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map, directly before global pooling."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def create_example_cnn(model_name: str | None = None, layer: str | None = None, weights: str = "pretrained",
                       input_size: int | None = None, device: str | torch.device = "cpu") -> Backbone:
    """``example-cnn:VARIANT``; ``weights`` is "none" (seeded random init) or a state-dict file."""
    if model_name not in VARIANTS:
        raise FeatinvError(f"unknown example-cnn variant {model_name!r}; use one of {', '.join(VARIANTS)}")
    spec = f"example-cnn:{model_name}"

    def pretrained() -> nn.Module:
        raise FeatinvError(f"{spec} has no published weights; pass --weights none or a state-dict file")

    model, used = build_with_weights(spec, weights, lambda: TinyCNN(VARIANTS[model_name]), pretrained)
    size = input_size or 32
    knowledge = ModelKnowledge(pre_pool=lambda m, x: m.forward_features(x), preferred_layers=("stages.1",))
    return Backbone(spec, model, layer, Preprocessing((size, size)), knowledge, device=device, weights=used)


@hookimpl
def register_backbones(register: Register) -> None:
    register("example-cnn", create_example_cnn, description="a small CNN: example-cnn:small (example plugin)")
