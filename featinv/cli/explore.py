"""`featinv explore`: the interactive explorer in the browser (Gradio, optional extra ``featinv[app]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featinv.cli.options import Device
from featinv.console import console


def explore(
    run: Annotated[list[Path], typer.Option("--run", help="FeatInv run folder (repeat to compare runs side by side).")],
    concepts: Annotated[Path | None, typer.Option("--concepts", help="Fitted concepts folder, for the Steer panel.")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Example images: a file or folder (default: the "
                                                "built-in photographs).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but 127.0.0.1 lets other "
                                      "machines in (a warning is printed).")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Port (default: the first free one "
                                             "from 7860).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Denoising steps to start with (Settings panel).")] = 25,
    device: Device = "cpu",
) -> None:
    """Explore runs in the browser: reconstruct, steer concepts, compose, interpolate, export the session.

    Example: featinv explore --run featinv-demo/featinv-unpooled --run featinv-demo/featinv-pooled --concepts featinv-demo/concepts
    """
    from featinv.apps.explore_ui import check_gradio, launch
    from featinv.apps.explorer import Explorer, ExploreSettings

    check_gradio()  # before loading models: a missing extra is one line at once
    explorer = Explorer(run, concepts=concepts, images=images, device=device, settings=ExploreSettings(steps=steps))
    launch(explorer, host=host, port=port, say=lambda line: console.print(line, markup=False, highlight=False,
                                                                        soft_wrap=True))


def explore_command(runs: list[Path], concepts: Path | None = None) -> str:
    """The `featinv explore` command line for ``runs`` (what `featinv demo` prints at its end)."""
    import shlex

    parts = ["featinv", "explore", *(f"--run {shlex.quote(str(r))}" for r in runs)]
    if concepts is not None:
        parts.append(f"--concepts {shlex.quote(str(concepts))}")
    return " ".join(parts)


def register(app: typer.Typer) -> None:
    app.command("explore")(explore)
