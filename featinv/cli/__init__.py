"""The root CLI: it only assembles one sub-app (or command) per noun, plus plugin commands."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from featinv import __version__
from featinv.console import err_console
from featinv.errors import FeatinvError

COMMAND_MODULES: tuple[str, ...] = (
    "featinv.cli.plugins",
    "featinv.cli.reconstruct",
    "featinv.cli.layers",
    "featinv.cli.train",
    "featinv.cli.presets",
    "featinv.cli.bases",
    "featinv.cli.eval",
    "featinv.cli.concepts",
    "featinv.cli.viz",
    "featinv.cli.demo",
    "featinv.cli.explore",
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
    """Add featinv's own commands, then plugin commands (a broken plugin only disables itself)."""
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    from featinv.cli.plugins import add_plugin_commands

    add_plugin_commands(app)


_assemble()


def _error_line(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input (ours or a bad option value) becomes one line on stderr and exit
    code 2 (so is a full disk), and an output folder the failed command created empty is removed again;
    Ctrl-C exits 130."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from featinv.cli.boundary import disk_error_line, no_partial_output, output_paths

    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = "--debug" in args
    try:
        with no_partial_output(output_paths(args)):
            code = app(args=args, prog_name="featinv", standalone_mode=False)
    except FeatinvError as exc:
        if _state["debug"]:
            raise
        _error_line(str(exc))
        sys.exit(2)
    except OSError as exc:
        message = disk_error_line(exc)
        if message is None or _state["debug"]:
            raise
        _error_line(message)
        sys.exit(2)
    except NoArgsIsHelpError as exc:  # `featinv eval` alone: show the help, as typer does
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:
        where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
        _error_line(exc.format_message().rstrip(".") + where)
        sys.exit(2)
    except ClickException as exc:
        _error_line(exc.format_message())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    if isinstance(code, int) and code:
        if code == 130:
            err_console.print("[yellow]interrupted[/]")
        sys.exit(code)
