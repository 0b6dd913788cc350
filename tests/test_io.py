"""Atomic writes and checksummed weight files."""

from __future__ import annotations

import pytest
import torch

from featinv.errors import FeatinvError
from featinv.io import (
    OWNER_MARKER,
    atomic_dir,
    atomic_write,
    ensure_output_dir,
    load_safetensors,
    read_json,
    save_safetensors,
    write_json,
)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target, "w") as handle:
        handle.write("whole")
    assert target.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_replaces_whole(tmp_path):
    target = tmp_path / "run"
    with atomic_dir(target, kind="thing") as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target, kind="thing") as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == [OWNER_MARKER, "a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with atomic_dir(target, kind="thing") as tmp:  # featinv's own earlier output of the same kind is replaced
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == [OWNER_MARKER, "c"]


def test_atomic_dir_never_replaces_a_folder_it_did_not_write(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("x")
    with pytest.raises(FeatinvError, match="did not write"), atomic_dir(victim, kind="concepts") as tmp:
        (tmp / "a").write_text("1")
    assert (victim / "thesis.txt").read_text() == "x"
    other = tmp_path / "ckpt"
    with atomic_dir(other, kind="checkpoint") as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(FeatinvError, match="holds featinv checkpoint, not concepts"), \
            atomic_dir(other, kind="concepts"):
        pass
    assert (other / "w").read_text() == "1"
    monkeypatch.chdir(victim)
    with pytest.raises(FeatinvError, match="current folder"), atomic_dir(".", kind="concepts"):
        pass
    with pytest.raises(FeatinvError, match="current folder"), atomic_dir(tmp_path, kind="concepts"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "victim"]
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty", kind="concepts") as tmp:  # an empty folder holds nothing to lose
        (tmp / "a").write_text("1")
    assert (tmp_path / "empty" / "a").is_file()


def test_json_roundtrip_and_corrupt(tmp_path):
    write_json(tmp_path / "m.json", {"x": torch.tensor(1.5), "p": tmp_path})
    assert read_json(tmp_path / "m.json")["x"] == 1.5
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FeatinvError, match="corrupt"):
        read_json(tmp_path / "bad.json", what="config")
    with pytest.raises(FeatinvError, match="does not exist"):
        read_json(tmp_path / "missing.json")


def test_safetensors_checksum_detects_corruption(tmp_path):
    path = tmp_path / "w.safetensors"
    weights = {"a": torch.randn(64, 64), "b": torch.arange(10)}
    save_safetensors(weights, path)
    loaded = load_safetensors(path)
    assert torch.equal(loaded["a"], weights["a"]) and torch.equal(loaded["b"], weights["b"])
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # flip one byte inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(FeatinvError, match="checksum"):
        load_safetensors(path)
    path.write_bytes(bytes(data[:50]))
    with pytest.raises(FeatinvError, match="corrupt or truncated"):
        load_safetensors(path)


def test_output_dir_that_is_a_file(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(FeatinvError, match="is a file"):
        ensure_output_dir(file)


def test_written_files_get_normal_permissions(tmp_path):
    import os

    write_json(tmp_path / "m.json", {"a": 1})
    with atomic_dir(tmp_path / "d", kind="thing"):
        pass
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_atomic_dir_swaps_in_one_exchange_where_the_os_can(tmp_path):
    from featinv.io import _exchange

    target = tmp_path / "c"
    with atomic_dir(target, kind="thing") as tmp:
        (tmp / "a").write_text("old")
    a, b = tmp_path / "x", tmp_path / "y"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    if _exchange(a, b):  # Linux: both names exist at every moment, contents swapped
        assert (b / "f").read_text() == "a" and not (a / "f").exists()
    with atomic_dir(target, kind="thing") as tmp:
        (tmp / "a").write_text("new")
    assert (target / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "x", "y"]


def test_a_killed_two_phase_swap_is_completed_and_temp_leftovers_cleaned(tmp_path):
    from featinv.io import clean_temp_leftovers

    run = tmp_path / "run"
    run.mkdir()
    aside = run / ".concepts.ab12cd34.old"  # killed between the two renames: the folder lives only here
    (aside / "x").mkdir(parents=True)
    (aside / "x" / "config.json").write_text("{}")
    (run / ".concepts.zz99yy88.tmp").mkdir()  # the new folder that never got renamed into place
    (run / ".img.png.k3j4h5g6.tmp.png").write_bytes(b"half")
    (run / ".mine.tmp").write_text("a user's hidden file is not ours")
    removed = clean_temp_leftovers(run)
    assert (run / "concepts" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in run.iterdir()) == [".mine.tmp", "concepts"]
    assert len(removed) == 3


def test_output_lock_refuses_a_second_writer_and_is_taken_over_after_a_kill(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from featinv.io import output_lock

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from featinv.io import output_lock\n"
         "with output_lock(sys.argv[1], 'featinv train --out X'):\n    print('locked', flush=True); time.sleep(60)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # gate on observed progress, not on timing
        with pytest.raises(FeatinvError, match=r"in use by `featinv train --out X` \(pid \d+\)"), \
                output_lock(out, "featinv eval"):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    deadline = time.monotonic() + 10
    with output_lock(out, "featinv eval") as folder:  # the dead holder's OS lock is gone: taken over at once
        assert folder == out and time.monotonic() < deadline


def test_atomic_dir_works_after_the_working_folder_was_deleted(tmp_path, monkeypatch):
    """A long run whose working folder is removed under it (a cleaned-up checkout) still writes its results."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with atomic_dir(tmp_path / "out", kind="checkpoint") as tmp:
        (tmp / "w").write_text("1")
    assert (tmp_path / "out" / "w").read_text() == "1"
