"""`featinv layers SPEC`: every hookable module path of a backbone with its output shape and stride."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from featinv.cli.options import Device, InputSize, JsonOutput, Layer, Mean, Std
from featinv.console import console


def layers(
    spec: Annotated[str, typer.Argument(help="Backbone spec, e.g. timm:convnext_tiny, torchvision:resnet50, "
                                        "hf:/path/to/saved/model or py:package.module:factory.")],
    input_size: InputSize = None,
    mean: Mean = None,
    std: Std = None,
    layer: Layer = None,
    weights: Annotated[str, typer.Option("--weights", help="Weights to build with; shapes do not depend on "
                                         "them, so 'none' (no download) is the default.")] = "none",
    spatial_only: Annotated[bool, typer.Option("--spatial-only", help="Hide modules without a spatial grid.")] = False,
    device: Device = "cpu",
    json_output: JsonOutput = False,
) -> None:
    """List every layer (module path) with its feature map as CxHxW and stride; * marks the default layer.

    Any layer with a grid can be passed as --layer to other commands; --layer here checks a name (marked >).

    Example: featinv layers timm:convnext_tiny --input-size 224
    """
    from featinv.features.backbone import list_layers

    model, infos = list_layers(spec, input_size=input_size, weights=weights, layer=layer, device=device, mean=mean,
                               std=std)
    if spatial_only:
        infos = [info for info in infos if info.spatial]
    if json_output:
        console.print_json(json.dumps({"spec": model.spec, "input_size": list(model.info.input_size),
                                       "default": model.default_layer, "layer": model.layer, "info": asdict(model.info), "layers": [asdict(i) for i in infos]}))
        return
    h, w = model.info.input_size
    table = Table(title=f"{model.spec} layers at {h}x{w} (* = default: {model.default_layer})")
    table.add_column("*", no_wrap=True)
    table.add_column("layer", overflow="fold")
    table.add_column("module", max_width=12, overflow="ellipsis", no_wrap=True)
    table.add_column("C×H×W", justify="right", min_width=10, no_wrap=True)
    table.add_column("stride", justify="right", min_width=6, no_wrap=True)
    table.add_column("layout", max_width=10, overflow="ellipsis", no_wrap=True)
    for info in infos:
        shape = "×".join(str(v) for v in info.shape) if info.shape else "—"
        style = "bold green" if info.is_default or info.path == model.layer else (None if info.spatial else "dim")
        mark = ("*" if info.is_default else "") + (">" if layer is not None and info.path == model.layer else "")
        table.add_row(mark, info.path, info.type, shape,
                      str(info.stride) if info.stride else "—", info.layout, style=style)
    console.print(table)
    if not model.has_classifier:
        console.print(f"note: {model.spec} has no classifier head: top-k match, Grad-CAM and class relevance "
                      "are not available; reconstruction, cosine, FID, concepts and the analyses work")


def register(app: typer.Typer) -> None:
    app.command("layers")(layers)
