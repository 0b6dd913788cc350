"""A custom backbone as a featinv plugin: your own classifier, inverted like any timm model.

    python examples/custom_backbone_plugin.py                              # register it, list its layers
    python examples/custom_backbone_plugin.py --base pixel:runs/base --images photos/ --out runs/smallcnn

featinv finds backbones through a registry that plugins fill. This script is such a plugin: the
``register_backbones`` hook below registers the prefix ``smallcnn``, so the spec ``smallcnn:base`` works
everywhere a backbone spec does -- ``featinv.backbone(...)``, ``FeatInv.create(...)``, ``featinv.train``,
and, once installed as a package, every CLI command (``featinv layers smallcnn:base``).

To ship it, put the hook in a package and declare an entry point in its ``pyproject.toml``::

    [project.entry-points.featinv]
    smallcnn = "my_package.smallcnn_plugin"

Here, without installing anything, the module is handed to ``featinv.registry.reset(extra_plugins=...)``.
With ``--base`` the script goes on to train a (tiny) FeatInv model on the custom backbone's feature map
with ``featinv.train`` and reconstructs ``--images`` from it. See docs/plugins.md for all plugin kinds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featinv import hookimpl
from featinv.hookspecs import Register


class SmallCNN(nn.Module):
    """Stands in for your own classifier: a stem, two stages (stride 8 in total), global pooling, a head."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()),
            nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU()),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map, directly before global pooling."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


VARIANTS = {"small": 8, "base": 16}


def create_smallcnn_backbone(model_name: str | None = None, layer: str | None = None, weights: str = "none",
                             input_size: int | None = None, device: str | torch.device = "cpu") -> Any:
    """Factory for specs ``smallcnn:VARIANT``; the signature every backbone factory has (see docs/plugins.md).

    ``weights``: "none" (seeded random init) or a ``.pt``/``.pth`` state dict saved from ``SmallCNN``.
    There are no published weights, so "pretrained" is refused with a clear message.
    """
    from featinv.errors import FeatinvError
    from featinv.features.backbone import Backbone, ModelKnowledge, Preprocessing
    from featinv.features.weights import build_with_weights

    if model_name not in VARIANTS:
        raise FeatinvError(f"unknown smallcnn variant {model_name!r}; use one of {', '.join(VARIANTS)}")
    spec = f"smallcnn:{model_name}"

    def pretrained() -> nn.Module:
        raise FeatinvError("smallcnn has no published weights; pass weights='none' or a state-dict file")

    # "none": a seeded random init (the same model in every process); a file: loaded into that model
    model, used = build_with_weights(spec, weights, lambda: SmallCNN(width=VARIANTS[model_name]), pretrained)
    size = input_size or 64
    knowledge = ModelKnowledge(
        # how to run the model up to global pooling: the module that made this tensor is the default layer
        pre_pool=lambda m, x: m.forward_features(x),
        # both `stages` and `stages.1` return that tensor; name the canonical one
        preferred_layers=("stages.1",),
    )
    return Backbone(spec, model, layer, Preprocessing((size, size)), knowledge, device=device, weights=used)


@hookimpl
def register_backbones(register: Register) -> None:
    """The plugin hook: featinv calls it once when it builds the backbone registry."""
    register("smallcnn", create_smallcnn_backbone, description="example: a small CNN defined in a script")


def build_parser() -> argparse.ArgumentParser:
    """The script's options (the docs tests check every option the docs mention against it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="smallcnn:base", help="backbone spec served by this plugin")
    parser.add_argument("--weights", default="none", help="'none' or a SmallCNN state-dict file")
    parser.add_argument("--base", default=None, help="diffusion base (e.g. pixel:DIR); train a FeatInv model on it")
    parser.add_argument("--images", type=Path, default=None, help="training images (and the ones reconstructed)")
    parser.add_argument("--out", type=Path, default=None, help="run folder to write")
    parser.add_argument("--train-steps", type=int, default=200, help="optimizer steps to train")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=25, help="denoising steps when reconstructing")
    parser.add_argument("--device", default=None, help="torch device (default: what accelerate picks)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv=None``: sys.argv); tests pass their own list."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Register the plugin, show its layers and, with --base, train and sample FeatInv on it."""
    args = parse_args(argv)
    import featinv
    from featinv.registry import reset

    # Load the built-ins (and installed plugins) plus this module. An installed package would not need this.
    reset(extra_plugins=(sys.modules[__name__],))
    print("backbones:", ", ".join(featinv.list_backbones()))

    backbone = featinv.backbone(args.spec, weights=args.weights)
    print(backbone)
    for layer in backbone.layers():
        shape = "x".join(map(str, layer.shape)) if layer.shape else f"- ({layer.layout})"
        print(f"  {'*' if layer.is_default else ' '} {layer.path:12s} {layer.type:12s} {shape}")
    outcome: dict[str, Any] = {"backbone": backbone}
    if args.base is None:
        return outcome
    if args.images is None or args.out is None:
        raise SystemExit("--base needs --images and --out")

    # Train FeatInv on the custom backbone's default layer, exactly as for a timm model.
    config = featinv.TrainConfig(backbone=args.spec, backbone_weights=args.weights, base=args.base, data=args.images,
                                 out=args.out, max_steps=args.train_steps, batch_size=args.batch_size, lr=args.lr,
                                 encoder_kwargs={"hidden": 64}, num_workers=0, val_steps=args.steps,
                                 device=args.device, progress=not args.quiet)
    run = featinv.train(config)
    model = featinv.FeatInv.from_pretrained(run, device=args.device or "cpu")
    summary = featinv.reconstruct_images(model, args.images, args.out / "reconstructions", steps=args.steps,
                                         device=args.device or "cpu", progress=not args.quiet)
    print(f"trained {run}; {len(summary.written)} reconstructions in {args.out / 'reconstructions'}")
    outcome.update(run=run, model=model, reconstructions=summary.written)
    return outcome


if __name__ == "__main__":
    main()
