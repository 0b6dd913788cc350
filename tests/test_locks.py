"""Output folders are locked: a second writer is refused with one line naming the running command, a lock
left by a killed process is taken over, and a nested call on the same folder needs no second lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from featinv.errors import FeatinvError
from featinv.io import LOCK_FILE, locks_output, output_lock
from tests.fixtures_model import make_tiny_images, make_tiny_pixel_base, make_tiny_run

HOLD = ("import sys, time; from featinv.io import output_lock\n"
        "with output_lock(sys.argv[1], sys.argv[2]):\n    print('locked', flush=True); time.sleep(120)")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock-assets")
    return {"run": make_tiny_run(root / "run"), "images": make_tiny_images(root / "photos", count=2),
            "base": make_tiny_pixel_base(root)}


def _hold(folder, command):
    """A real second process holding the folder's lock until killed (gated on its own 'locked' line)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), command], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _featinv(*args):
    return subprocess.run([sys.executable, "-m", "featinv", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("command", ["reconstruct", "eval", "train"])
def test_a_second_writer_is_refused_with_one_line_then_the_lock_is_taken_over(command, assets, tmp_path):
    out = tmp_path / "out"
    args = {
        "reconstruct": ["reconstruct", "--run", str(assets["run"]), "--images", str(assets["images"]), "--steps", "1",
                        "--out", str(out), "--quiet"],
        "eval": ["eval", "--run", str(assets["run"]), "--data", str(assets["images"]), "--steps", "1", "--fid", "none",
                 "--out", str(out), "--quiet"],
        "train": ["train", "--backbone", "timm:tf_efficientnet_lite0", "--layer", "blocks.4", "--weights", "none",
                  "--input-size", "64", "--base", f"pixel:{assets['base']}", "--data",
                  str(assets["images"]), "--max-steps", "1", "--batch-size", "2", "--out", str(out), "--quiet"],
    }[command]
    holder = _hold(out, "featinv train --seed 1 --out X")
    try:
        refused = _featinv(*args)
        assert refused.returncode == 2, refused.stderr
        assert "in use by `featinv train --seed 1 --out X`" in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    if command == "reconstruct":  # the lock mechanism is one for all commands: one takeover run shows it
        taken_over = _featinv(*args)  # the killed holder's lock is free again at once
        assert taken_over.returncode == 0, taken_over.stderr
        assert not (out / (LOCK_FILE + ".json")).exists() and list(out.glob("*.png"))


def test_nested_calls_on_one_folder_share_the_lock(tmp_path):
    @locks_output("out")
    def outer(out):
        return inner(out=out)

    @locks_output("out")
    def inner(out):
        return (out / (LOCK_FILE + ".json")).is_file()

    assert outer(tmp_path / "x") is True
    with output_lock(tmp_path / "y", "first"), pytest.raises(FeatinvError, match="in use by `first`"):
        _contend(tmp_path / "y")  # another process is refused while this one holds the folder


def _contend(folder):
    """Another process trying the held lock: its one-line error comes back here as a FeatinvError."""
    result = subprocess.run([sys.executable, "-c", "import sys; from featinv.io import output_lock\n"
                             "with output_lock(sys.argv[1]): pass", str(folder)], capture_output=True, text=True)
    if result.returncode:
        raise FeatinvError(result.stderr.strip().splitlines()[-1].split("FeatinvError: ", 1)[-1])
