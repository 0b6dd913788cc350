"""The one rich console all terminal output goes through (library progress bars and CLI messages alike)."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
