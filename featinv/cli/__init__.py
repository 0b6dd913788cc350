"""The root CLI: it only assembles one sub-app (or command) per noun, plus plugin commands."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from featinv import __version__
from featinv.cli.console import err_console
from featinv.errors import FeatinvError

COMMAND_MODULES: tuple[str, ...] = (
    "featinv.cli.plugins",
    "featinv.cli.layers",
    "featinv.cli.reconstruct",
    "featinv.cli.train",
    "featinv.cli.base",
    "featinv.cli.eval",
    "featinv.cli.concepts",
    "featinv.cli.viz",
)

app = typer.Typer(
    name="featinv",
    help="See what a vision model sees: invert feature maps to images with FeatInv.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        print(f"featinv {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    """featinv: feature-map inversion with conditional diffusion (FeatInv) and the tools built on it."""
    _state["debug"] = debug


def _assemble() -> None:
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    from featinv.registry import plugin_manager

    plugin_manager().hook.register_commands(app=app)


_assemble()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input becomes one line on stderr and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = "--debug" in args
    try:
        app(args=args, prog_name="featinv")
    except FeatinvError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
