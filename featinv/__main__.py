"""``python -m featinv`` runs the CLI."""

from featinv.cli import main

main()
