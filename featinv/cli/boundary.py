"""The CLI's error boundary: no empty output folder survives a failed command, and a full disk is one line.

Most commands validate first and create their output folder afterwards; :func:`no_partial_output` is the
safety net for the rest: an output folder that did not exist before a failed command, and that still holds
no file, is removed again, so a typo never leaves an empty ``--out`` folder behind. Folders holding files
are never touched (a failed evaluation keeps the images it finished, so a rerun resumes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from featinv.io import LOCK_FILE

#: OS errors a user fixes by freeing space or choosing another folder (one line, exit 2; others keep the traceback)
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only"}

#: command-line options whose value is a path the command writes to
OUTPUT_OPTIONS = ("--out", "-o")


def output_paths(args: Sequence[str]) -> list[Path]:
    """The paths given to ``--out``/``-o`` in a command line (``--out X`` and ``--out=X`` forms)."""
    paths: list[Path] = []
    for i, arg in enumerate(args):
        if arg in OUTPUT_OPTIONS and i + 1 < len(args):
            paths.append(Path(args[i + 1]))
        elif arg.startswith("--out="):
            paths.append(Path(arg.split("=", 1)[1]))
    return paths


def disk_error_line(exc: OSError) -> str | None:
    """The one line for a full disk (or quota, or read-only file system), None for any other OS error.

    Every file featinv writes is atomic, so what was finished is whole and a rerun after freeing space
    resumes; the line says so.
    """
    reason = DISK_ERRORS.get(exc.errno or 0)
    if reason is None:
        return None
    where = f" writing {exc.filename}" if exc.filename else ""
    return (f"{reason}{where}; free some space (or choose another --out) and run the command again: finished "
            "outputs are kept and the rerun resumes (train: --resume)")


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, outermost first (what a failed command may create)."""
    missing: list[Path] = []
    current = path.absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing[::-1]


def _holds_no_file(path: Path) -> bool:
    """Whether ``path`` is a folder tree with only empty folders, hidden temp files or featinv's lock file in it."""
    if not path.is_dir() or path.is_symlink():
        return False
    for _root, _dirs, files in os.walk(path):
        if any(not (name.startswith(".") and (".tmp" in name or name.startswith(LOCK_FILE))) for name in files):
            return False
    return True


@contextlib.contextmanager
def no_partial_output(paths: Sequence[str | os.PathLike[str]]) -> Iterator[None]:
    """On an error inside the block, remove output folders it created that hold no file.

    Interrupts (Ctrl-C) are left alone: a stopped command keeps what it wrote so a rerun resumes.
    """
    created = [p for path in paths for p in _missing_ancestors(Path(path))]
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        for path in created:  # outermost first: removing it removes the others with it
            if path.exists() and _holds_no_file(path):
                shutil.rmtree(path, ignore_errors=True)
        raise
