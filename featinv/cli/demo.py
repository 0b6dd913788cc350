"""`featinv demo`: the whole paper end to end, offline, on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featinv.cli.explore import explore_command
from featinv.cli.options import Quiet
from featinv.console import console


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (finished stages in it are reused).")] = Path("featinv-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Fewer steps, same stages and outputs (about 3 minutes).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same numbers.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Train and evaluate unpooled and pooled FeatInv on a real backbone, offline, then write a report.

    Example: featinv demo --out featinv-demo --quick
    """
    from featinv.apps.demo import run_demo
    from featinv.evaluation.tables import rich_table

    result = run_demo(out, quick=quick, seed=seed, quiet=quiet, say=lambda msg: console.print(f"[bold cyan]{msg}[/]"))
    console.print(rich_table(list(result.metrics["results"].values()), title="FeatInv demo — Table 1 in small"))
    console.print(f"report: [bold]{result.report}[/] ({result.seconds / 60:.1f} min)")
    console.print('explore these models in the browser (needs the app extra: pip install "featinv[app]"):',
                  markup=False, highlight=False)
    console.print("  " + explore_command([result.out / "featinv-unpooled", result.out / "featinv-pooled"],
                                         result.out / "concepts"), markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
