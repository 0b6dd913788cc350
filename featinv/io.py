"""Atomic file output: every file featinv writes appears whole or not at all (temp file + rename).

(Just over 400 lines: atomic files, atomic folder swaps, the temp-leftover cleaning and the folder lock share
one temp-name and marker convention, kept in one module so they cannot drift apart.)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

from featinv.errors import FeatinvError

CHECKSUM_KEY = "featinv_checksum"
P = ParamSpec("P")
R = TypeVar("R")


def _default_mode(directory: bool = False) -> int:
    """The permissions a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _temp_sibling(path: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.fchmod(fd, _default_mode())
    os.close(fd)
    return Path(name)


def ensure_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` as a directory, or explain why it cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FeatinvError(f"output path {path} is a file; pass a directory path instead")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FeatinvError(f"cannot create output directory {path} ({exc.strerror}); choose a writable path") from None
    if not os.access(path, os.W_OK):
        raise FeatinvError(f"output directory {path} is not writable; choose a writable path")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    ensure_output_dir(path.parent)
    tmp = _temp_sibling(path, path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it becomes ``path`` only if the block finishes."""
    if encoding is None and "b" not in mode:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


OWNER_MARKER = ".featinv-folder.json"


def _owner_kind(path: Path) -> str | None:
    """The kind featinv recorded in a folder it wrote with :func:`atomic_dir` (None: not featinv's)."""
    marker = path / OWNER_MARKER
    if not marker.is_file():
        return None
    try:
        kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _current_folder() -> Path | None:
    """The resolved working folder, or None when it was deleted under the process (it then cannot be a target)."""
    try:
        return Path.cwd().resolve()
    except FileNotFoundError:
        return None


def check_replaceable(path: str | os.PathLike[str], kind: str) -> Path:
    """Refuse to replace a folder featinv did not write as ``kind``: replacing deletes what it holds.

    A missing or empty folder is fine; a folder with featinv's marker for the same kind of output is
    featinv's own earlier result and may be replaced; anything else (the user's files, a run, the
    current folder) is refused with one line.
    """
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise FeatinvError(f"output path {path} is a file or link; pass a new or empty folder instead")
    resolved, here = path.resolve(), _current_folder()
    if here is not None and (resolved == here or resolved in here.parents):
        raise FeatinvError(f"output folder {path} is (or holds) the current folder; pass a new or empty folder instead")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    theirs = _owner_kind(path)
    if theirs is None:
        raise FeatinvError(f"output folder {path} already holds files featinv did not write; featinv never replaces "
                           "a folder it did not create: pass a new or empty folder")
    if theirs != kind:
        raise FeatinvError(f"output folder {path} holds featinv {theirs}, not {kind}; pass a new or empty folder")
    return path


#: names of featinv's temp files/folders: ".NAME." + tempfile's 8 random characters + ".tmp[.ext]" / ".old"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp(\.[A-Za-z0-9]+)?|old)$")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic rename (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # filesystem or kernel without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover_swaps(parent: str | os.PathLike[str]) -> list[Path]:
    """Finish what a killed two-phase swap left: a folder moved aside but never replaced is moved back.

    Only used where the one-rename exchange is unsupported; returns the folders put back.
    """
    restored = []
    for aside in Path(parent).glob(".*.old"):
        if not _TEMP_NAME.match(aside.name):
            continue
        held = aside / "x"
        name = aside.name[1:].rsplit(".", 2)[0]  # ".NAME.<8 random characters>.old"
        target = aside.parent / name
        if held.is_dir() and not target.exists():
            os.replace(held, target)
            restored.append(target)
    return restored


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` once the block succeeds.

    ``kind`` names what the folder holds (``"concepts"``, ``"checkpoint"`` ...); it is recorded in a
    marker so that only featinv's own earlier output of the same kind is ever replaced. The swap is one
    atomic exchange where the OS has it (Linux), so a kill at any moment leaves either the old or the new
    folder; elsewhere a kill between the two renames is undone by :func:`recover_swaps` at the next start.
    """
    path = check_replaceable(path, kind)
    ensure_output_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(_default_mode(directory=True))
    try:
        yield tmp
        write_text(tmp / OWNER_MARKER, json.dumps({"kind": kind}) + "\n")
        if not path.exists():
            os.replace(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_temp_leftovers(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden temp files/folders that killed atomic writes left anywhere under ``folder``.

    Call only while holding the folder's :func:`output_lock`: then no live writer owns them. Interrupted
    two-phase swaps are completed first, so nothing that still holds a result is deleted.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        recover_swaps(root)
        for name in [*dirs, *files]:
            if _TEMP_NAME.match(name):
                target = Path(root) / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
                removed.append(target)
        dirs[:] = [d for d in dirs if (Path(root) / d).exists()]
    return removed


LOCK_FILE = ".featinv.lock"
_HELD: set[Path] = set()  # folders this process holds: a nested call on the same folder needs no second lock


def _process_rank() -> tuple[int, int]:
    """(rank, world size) of a process started by ``torchrun`` / ``accelerate launch`` (0, 1 otherwise)."""
    def number(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() else default

    return number("RANK", 0), number("WORLD_SIZE", 1)


def running_command() -> str:
    """The command line of this process, as a second writer is told it."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "a Python process"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike[str], command: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder while a command writes into it.

    A second writer gets one line naming the command that holds it. The lock is an OS file lock
    (``filelock``), so a lock left by a killed process is free again at once and simply taken over. The
    processes of one multi-process run (``torchrun``/``accelerate launch``) each hold their rank's lock,
    so a second run is refused by every rank; rank 0 holds the folder's own lock file, so a single-process
    command and a multi-process run also refuse each other. On entry of a single-process run, temp leftovers of earlier
    killed writes are cleaned (see :func:`clean_temp_leftovers`). Re-entering a folder this process
    already holds is a no-op.
    """
    from filelock import FileLock, Timeout

    created = not Path(folder).exists()
    folder = ensure_output_dir(folder)
    key = folder.resolve()
    if key in _HELD:
        yield folder
        return
    rank, world = _process_rank()
    name = LOCK_FILE if rank == 0 else f"{LOCK_FILE}.rank{rank}"
    lock = FileLock(str(folder / name))
    holder_file = folder / (name + ".json")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = json.loads(holder_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            holder = {}
        who = f"`{holder.get('command', 'another featinv command')}` (pid {holder.get('pid', '?')})"
        raise FeatinvError(f"output folder {folder} is in use by {who}; wait for it to finish or choose another "
                           "output folder") from None
    _HELD.add(key)
    failed = False
    try:
        write_json(holder_file, {"command": command or running_command(), "pid": os.getpid()})
        if world == 1:
            clean_temp_leftovers(folder)
        yield folder
    except Exception:
        failed = True
        raise
    finally:
        _HELD.discard(key)
        holder_file.unlink(missing_ok=True)
        lock.release()
        if failed and created and {p.name for p in folder.iterdir()} <= {name}:
            shutil.rmtree(folder, ignore_errors=True)  # a command refused before writing leaves no folder behind


def locks_output(parameter: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate an API call that writes into the folder given by ``parameter`` (``"out"``, or a dotted
    ``"config.out"``): the call holds :func:`output_lock` on it (nothing is locked when it is None)."""
    name, _, attribute = parameter.partition(".")

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind_partial(*args, **kwargs)
            value = bound.arguments.get(name, signature.parameters[name].default)
            folder = getattr(value, attribute, None) if attribute else value
            if folder is None or folder is inspect.Parameter.empty:
                return func(*args, **kwargs)
            with output_lock(folder):
                return func(*args, **kwargs)

        return locked

    return decorate


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (numpy/torch scalars and paths are converted)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or corrupt file into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FeatinvError(f"{what} {path} does not exist; check the path (was the run/folder written by featinv?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeatinvError(f"{what} {path} is corrupt ({exc.__class__.__name__}); restore it or recreate the folder") from None


def _tensor_digest(tensors: dict[str, Any]) -> str:
    """A sha256 over names, shapes, dtypes and raw bytes, so any flipped byte is caught."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().contiguous().cpu()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """Save tensors atomically with a sha256 of their contents in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = dict(metadata or {})
    meta[CHECKSUM_KEY] = _tensor_digest(tensors)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except Exception as exc:  # safetensors reports a failed write (a full disk) as SafetensorError, not OSError
            code = re.search(r"\(os error (\d+)\)", str(exc))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def load_safetensors(path: str | os.PathLike[str], device: str = "cpu") -> dict[str, Any]:
    """Load tensors and verify the checksum written by :func:`save_safetensors`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FeatinvError(f"weight file {path} does not exist; check the path or retrain/refit")
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several private error types for broken files
        raise FeatinvError(f"weight file {path} is corrupt or truncated ({exc}); restore or recreate it") from None
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and _tensor_digest(tensors) != expected:
        raise FeatinvError(f"weight file {path} fails its checksum (corrupt); restore or recreate it")
    return tensors


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
