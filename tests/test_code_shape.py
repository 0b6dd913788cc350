"""The code-shape rules of the project (issue #16), checked so they stay true: no function in the library is
over ~80 lines, and a module over ~400 lines says why in its docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featinv"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_the_library_is_found() -> None:
    assert len(MODULES) > 20


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_function_is_over_80_lines(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, from line {node.lineno})"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{_name(path)}: split into named steps: {', '.join(long)}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_a_module_over_400_lines_says_why(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    if lines <= MAX_MODULE_LINES:
        return
    docstring = " ".join((ast.get_docstring(ast.parse(text)) or "").split())
    assert "400 lines" in docstring, (f"{_name(path)} has {lines} lines: split it along its seams, or say in its "
                                      "docstring why it is over 400 lines")
