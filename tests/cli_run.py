"""Running the real CLI inside the test process: its exit code, or the one-line error a bad input must give."""

from __future__ import annotations

from typing import Any

import pytest


def exit_code(args: list[Any]) -> int:
    """Run ``featinv ARGS`` in this process (the registries see what the test installed); its exit code."""
    from featinv.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def one_line_error(args: list[Any], capsys: Any) -> str:
    """Stderr of ``featinv ARGS``, checked to be the promised single ``error: …`` line with exit code 2."""
    from featinv.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return err
