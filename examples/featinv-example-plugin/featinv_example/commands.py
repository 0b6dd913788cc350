"""A command plugin: ``featinv pca-variance`` prints how much energy each PCA concept explains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featinv.hookspecs import hookimpl


@hookimpl
def register_commands(app: typer.Typer) -> None:
    """Add ``featinv pca-variance`` to the root app."""

    @app.command("pca-variance")
    def pca_variance(
        concepts: Annotated[Path, typer.Option("--concepts", help="A concepts folder fitted with --method pca.")],
    ) -> None:
        """Print the share of feature energy each PCA concept explains.

        Example: featinv pca-variance --concepts concepts-pca
        """
        from rich.table import Table

        from featinv.concepts.base import load_decomposer
        from featinv.console import console
        from featinv.errors import FeatinvError
        from featinv_example.pca import PCADecomposer

        decomposer = load_decomposer(concepts)
        if not isinstance(decomposer, PCADecomposer):
            raise FeatinvError(f"{concepts} holds {decomposer.name} concepts, not pca; fit with --method pca")
        table = Table(title=f"PCA concepts in {concepts}")
        table.add_column("concept", justify="right")
        table.add_column("energy explained", justify="right")
        for index, share in enumerate(decomposer.energy.tolist()):
            table.add_row(str(index), f"{share:.1%}")
        console.print(table)
