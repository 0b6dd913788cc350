"""`featinv concepts fit|show`: fit a concept decomposition of a layer's features; draw concept activation maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from featinv.cli.options import (
    BackboneSpec,
    BatchSize,
    Device,
    InputSize,
    Layer,
    PresetName,
    Quiet,
    Weights,
    parse_options,
)
from featinv.console import console

concepts_app = typer.Typer(
    help="Concept decompositions of a layer's feature space (mcd, nmf, sae) and their activation maps.",
    no_args_is_help=True,
)

Method = Annotated[str | None, typer.Option(
    "--method", "-m", "--decomposer", help="Decomposer: mcd, mcd-reference (fitted as the reference MCD-XAI code), "
    "nmf, sae (or a plugin's); default: the --preset's (paper presets: mcd-reference), else mcd.")]
NConcepts = Annotated[int, typer.Option("--n-concepts", "-k", min=1, help="Number of concepts K.")]
MaxImages = Annotated[int | None, typer.Option("--max-images", min=1, help="Use at most this many images (sorted order).")]
TargetClass = Annotated[int | None, typer.Option(
    "--target-class", min=0, help="Store this class's classifier row for concept relevances (last layer only).")]
Options = Annotated[list[str] | None, typer.Option(
    "--option", help="Decomposer option KEY=VALUE (repeatable), e.g. clustering=kmeans or k=4.")]
ConceptsDir = Annotated[Path, typer.Option("--concepts", "-c", help="A concepts folder written by `featinv concepts fit`.")]


def fit(
    backbone: BackboneSpec,
    data: Annotated[Path, typer.Option("--data", help="Images to fit on: a folder (e.g. one class) or an image file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Concepts folder to write.")],
    layer: Layer = None,
    method: Method = None,
    preset: PresetName = None,
    n_concepts: NConcepts = 5,
    weights: Weights = "pretrained",
    input_size: InputSize = None,
    max_images: MaxImages = None,
    target_class: TargetClass = None,
    option: Options = None,
    batch_size: BatchSize = 16,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Fit K concepts on the feature vectors of every position of every image and save them.

    The folder stores the backbone spec, layer and channel count, so later commands can check that they
    decompose the same features.

    --preset paper:convnext fits with that preset's decomposer (mcd-reference, the reference MCD) unless
    --decomposer is given; the folder records the preset's name.

    Example: featinv concepts fit --backbone timm:tf_efficientnet_lite0 --layer blocks.4 --data photos/ --method mcd --n-concepts 5 --out concepts/
    """
    from featinv.concepts.fit import fit_concepts

    decomposer = fit_concepts(
        backbone, layer=layer, data=data, method=method, n_concepts=n_concepts, out=out, weights=weights,
        input_size=input_size, max_images=max_images, batch_size=batch_size, device=device,
        target_class=target_class, progress=not quiet, preset=preset, **parse_options(option),
    )
    meta = decomposer.meta
    table = Table(title=f"{decomposer.name} concepts -> {out}")
    table.add_column("")
    table.add_column("value")
    table.add_row("features", f"{meta['backbone']} {meta['layer']} ({decomposer.channels} channels)")
    table.add_row("data", f"{meta['n_images']} images, {meta['n_vectors']} vectors"
                  + (f", {meta['skipped_images']} unreadable skipped" if meta["skipped_images"] else ""))
    table.add_row("concepts", str(decomposer.n_concepts))
    table.add_row("energy explained", f"{100 * meta['energy_explained']:.1f}% of the fitting vectors' |f|^2")
    for key, value in decomposer.summary().items():
        table.add_row(key, str(value))
    console.print(table)


def show(
    concepts: ConceptsDir,
    image: Annotated[Path, typer.Option("--image", "-i", help="Image to decompose.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    device: Device = "cpu",
) -> None:
    """Draw the concept activation maps (|part|^2 per position, bilinearly upsampled) over an image.

    Example: featinv concepts show --concepts concepts/ --image photos/cat.png --out cat-concepts.png
    """
    from featinv.concepts.maps import show_concepts

    path = show_concepts(concepts, image, out, device=device)
    console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    concepts_app.command("fit")(fit)
    concepts_app.command("show")(show)
    app.add_typer(concepts_app, name="concepts")
