"""Tiny "own" models for the bring-your-own-model tests: random-init transformers vision models saved with
``save_pretrained`` (plus an image processor) and a plain ``nn.Module`` with a ``py:`` factory.

    from tests.fixtures_own_models import save_tiny_hf_models, write_py_factory

Everything is built from configs (no download), seeded, and a few kilobytes on disk.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from torch import nn

#: name -> how the model emits its grid (for test ids)
HF_MODELS = ("vit", "dinov2_registers", "clip_vision", "siglip_vision", "convnext", "swin")

_TRANSFORMER = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


def _builders() -> dict[str, tuple[object, object]]:
    import transformers as T

    square = {"height": 32, "width": 32}
    return {
        # class token, classifier head (5 classes), resize to 32x32
        "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(intermediate_size=32, num_labels=5, **_TRANSFORMER)),
                lambda: T.ViTImageProcessor(size=square)),
        # class token + 2 register tokens, no classifier, resize 40 + centre crop 32
        "dinov2_registers": (lambda: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
            mlp_ratio=2, num_register_tokens=2, **_TRANSFORMER)),
            lambda: T.BitImageProcessor(size={"shortest_edge": 40}, crop_size=square)),
        "clip_vision": (lambda: T.CLIPVisionModel(T.CLIPVisionConfig(intermediate_size=32, **_TRANSFORMER)),
                        lambda: T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=square)),
        # no class token at all
        "siglip_vision": (lambda: T.SiglipVisionModel(T.SiglipVisionConfig(intermediate_size=32, **_TRANSFORMER)),
                          lambda: T.SiglipImageProcessor(size=square)),
        # NCHW stages (channels-last inside blocks), classifier head
        "convnext": (lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
            num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5, image_size=32)),
            lambda: T.ConvNextImageProcessor(size={"shortest_edge": 32})),
        # token stages that merge patches, stage outputs are tuples
        "swin": (lambda: T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                                  num_heads=[2, 2], window_size=2)),
                 lambda: T.ViTImageProcessor(size=square)),
    }


def save_tiny_hf_models(folder: Path, names: tuple[str, ...] = HF_MODELS) -> dict[str, Path]:
    """Save each named tiny model (with its image processor) to ``folder/NAME``; returns name -> folder."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    builders = _builders()
    saved = {}
    for name in names:
        build_model, build_processor = builders[name]
        torch.manual_seed(0)
        target = Path(folder) / name
        build_model().save_pretrained(target)
        build_processor().save_pretrained(target)
        saved[name] = target
    return saved


class TinyNet(nn.Module):
    """A 3-stage CNN: 32x32 input -> 16x8x8 map at ``stages.2`` -> 4 logits (or an embedding)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(x)).flatten(1))


FACTORY_MODULE = '''
"""A user's own model code, importable as ``{module}`` (written by tests/fixtures_own_models.py)."""
import torch
from tests.fixtures_own_models import TinyNet


def build():
    torch.manual_seed(0)
    return TinyNet()


def build_with_options():
    torch.manual_seed(0)
    return TinyNet(), {{"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


def build_encoder():
    torch.manual_seed(0)
    return {{"model": TinyNet(num_classes=12), "input_size": 32, "classifier": False}}


def broken():
    raise RuntimeError("weights server down")
'''


def write_py_factory(folder: Path, module: str = "my_models") -> Path:
    """Write ``folder/module.py`` with factories ``build``, ``build_with_options``, ``build_encoder``, ``broken``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(FACTORY_MODULE.format(module=module)))
    return folder
