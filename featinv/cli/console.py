"""The one rich console all terminal output goes through."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
