"""Interrupting real ``featinv`` processes (SIGINT = Ctrl-C, SIGKILL = kill -9), then running the command again.

Each test starts ``python -m featinv ...`` on tiny saved models, waits for a marker that shows progress (a
checkpoint folder, an ``index.json``, a process blocked half-way through its images), sends the signal and
checks what is on disk: nothing half-written, nothing that a rerun would redo or duplicate. The rerun runs
in-process (same command line through ``featinv.cli.main``) to keep the file fast; it must finish the job,
skip what was finished, and leave the finished files byte-identical.

The demo's stages are reused through ``train_state.json``; that is tested at the API level (a quick demo
takes minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featinv.cli import main
from tests.fixtures_model import TINY_BACKBONE, make_tiny_images, make_tiny_pixel_base, make_tiny_run

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
              pytest.mark.usefixtures("one_thread")]




@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("interrupt")
    images = make_tiny_images(root / "images", count=6)
    for label in ("a", "b"):  # an evaluation set with two classes
        make_tiny_images(root / "val" / label, count=3)
    return {"root": root, "run": make_tiny_run(root), "base": make_tiny_pixel_base(root, name="base16"),
            "images": images, "val": root / "val"}


# ------------------------------------------------------------------------------------------ helpers


def _ctrl_c_reaches_python() -> None:
    """In the child before exec: Ctrl-C at its default, so Python turns it into KeyboardInterrupt even when the
    suite itself runs as a background job (where the shell leaves SIGINT ignored, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list, log: Path) -> subprocess.Popen:
    """``python -m featinv ARGS`` in the repository, output to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "featinv", *map(str, args)], cwd=REPO, stdout=handle,
                                stderr=subprocess.STDOUT, env=env, preexec_fn=_ctrl_c_reaches_python)


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    """Poll ``condition`` until it holds; fail (with the process output) if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"featinv ended (exit {proc.returncode}) before showing progress:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(f"no progress marker after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _interrupt(proc: subprocess.Popen, sig: int, log: Path) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"featinv did not stop after signal {sig}:\n{log.read_text()[-3000:]}")


def _pngs(folder: Path) -> dict[str, bytes]:
    """Every visible PNG (name -> bytes); each must decode completely (no half-written image)."""
    found = {}
    for path in sorted(folder.rglob("*.png")):
        if path.name.startswith("."):
            continue
        with Image.open(path) as img:
            img.load()
        found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def _temp_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------- reconstruct


def test_reconstruct_ctrl_c_then_rerun_skips_finished_images(assets, tmp_path, capsys):
    out = tmp_path / "recon"
    args = ["reconstruct", "--run", assets["run"], "--images", assets["images"], "--seeds", "0,1", "--steps", "40",
            "--batch-size", "1", "--out", out, "--quiet"]
    log = tmp_path / "log.txt"
    proc = _start(args, log)
    _wait_for(lambda: (out / "index.json").is_file(), proc, log)
    assert _interrupt(proc, signal.SIGINT, log) == 130, log.read_text()
    assert "Traceback" not in log.read_text()

    before = _pngs(out)
    index = json.loads((out / "index.json").read_text())  # a complete JSON document, never half a file
    assert 1 <= len(before) < 12, "the signal came too late to test resuming"
    assert {item["file"] for item in index["items"]} <= set(before)  # the index never lists a missing image
    assert not _temp_leftovers(out)  # Ctrl-C cleans up the temporary file of the image being written

    main([str(a) for a in args])
    assert f"wrote {12 - len(before)} images, skipped {len(before)} already done" in capsys.readouterr().out
    after = _pngs(out)
    assert len(after) == 12 and all(after[name] == data for name, data in before.items())
    items = json.loads((out / "index.json").read_text())["items"]
    assert sorted(item["file"] for item in items) == sorted(after) and len(items) == 12


# --------------------------------------------------------------------------------------------- eval


def test_eval_kill_9_then_rerun_resumes_without_redoing_images(assets, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--run", assets["run"], "--data", assets["val"], "--per-class", "3", "--steps", "40",
            "--batch-size", "1", "--fid", "none", "--out", out, "--quiet"]
    log = tmp_path / "log.txt"
    proc = _start(args, log)
    _wait_for(lambda: (out / "index.json").is_file(), proc, log)
    assert _interrupt(proc, signal.SIGKILL, log) == -signal.SIGKILL

    rows_before = {row["key"]: row for row in json.loads((out / "index.json").read_text())["rows"]}
    images_before = _pngs(out)
    assert 1 <= len(rows_before) < 6, "the signal came too late to test resuming"
    assert {row["file"] for row in rows_before.values()} <= set(images_before)
    assert not (out / "metrics.json").exists()  # nothing claims to be a finished evaluation

    main([str(a) for a in [*args, "--json"]])
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["n_images"] == 6
    metrics = json.loads((out / "metrics.json").read_text())
    keys = [row["key"] for row in metrics["rows"]]
    assert len(keys) == len(set(keys)) == 6  # nothing lost, nothing twice
    for row in metrics["rows"]:
        if row["key"] in rows_before:  # finished before the kill: reused, not recomputed
            # the index also keeps each row's per-position cosines, which metrics.json leaves out by design
            assert row == {k: v for k, v in rows_before[row["key"]].items() if k != "cosine_positions"}
    after = _pngs(out)
    assert len(after) == 6 and all(after[name] == data for name, data in images_before.items())


# -------------------------------------------------------------------------------------------- train


def _checkpoint_steps(out: Path) -> list[int]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "state.json").is_file())


def test_train_ctrl_c_and_kill_9_then_resume_loses_and_repeats_nothing(assets, tmp_path, capsys):
    from featinv.diffusion.model import FeatInv

    out = tmp_path / "train"
    total = 24
    args = ["train", "--data", assets["images"], "--out", out, "--backbone", TINY_BACKBONE, "--weights", "none",
            "--input-size", "64", "--layer", "blocks.4", "--base", f"pixel:{assets['base']}", "--max-steps", total,
            "--batch-size", "2", "--checkpoint-every", "3", "--keep-checkpoints", "2", "--log-every", "1",
            "--num-workers", "0", "--val-steps", "1", "--resume"]

    # 1. Ctrl-C after the first checkpoint: the step finishes, a checkpoint + a loadable model are written
    log = tmp_path / "log1.txt"
    proc = _start([*args, "--quiet"], log)
    _wait_for(lambda: bool(_checkpoint_steps(out)), proc, log)
    assert _interrupt(proc, signal.SIGINT, log) == 130, log.read_text()
    state = json.loads((out / "train_state.json").read_text())
    assert state["status"] == "interrupted" and 3 <= state["step"] < total, state
    stopped = state["step"]
    assert _checkpoint_steps(out)[-1] == stopped
    FeatInv.from_pretrained(out)

    # 2. resume, then kill -9 once a later checkpoint exists: only the periodic checkpoints survive
    log = tmp_path / "log2.txt"
    proc = _start([*args, "--quiet"], log)
    _wait_for(lambda: any(step > stopped for step in _checkpoint_steps(out)), proc, log)
    assert _interrupt(proc, signal.SIGKILL, log) == -signal.SIGKILL
    *older, killed_at = _checkpoint_steps(out)  # (a kill between saving and rotating may leave an extra one)
    assert stopped < killed_at and stopped in older

    # 3. the newest checkpoint got damaged (a disk error): resuming says which folder to drop
    newest = out / "checkpoints" / f"step-{killed_at:08d}"
    weights = bytearray((newest / "trainable.safetensors").read_bytes())
    weights[-5] ^= 0xFF
    (newest / "trainable.safetensors").write_bytes(bytes(weights))
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"checkpoint {newest} is unusable" in err and "delete that folder" in err
    shutil.rmtree(newest)

    # 4. the same command again finishes the run from the newest good checkpoint
    main([str(a) for a in args])
    assert f"resuming from {out / 'checkpoints' / f'step-{older[-1]:08d}'}" in capsys.readouterr().out
    state = json.loads((out / "train_state.json").read_text())
    assert state["status"] == "complete" and state["step"] == total
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # every step logged exactly once across four processes
    assert len(_checkpoint_steps(out)) <= 2 and not _temp_leftovers(out / "checkpoints")
    FeatInv.from_pretrained(out)

    # 5. the folder now holds a run for blocks.4: resuming it for another layer, or a fresh start, is refused
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    for changed, message in ((["--layer", "blocks.5"], "settings changed (layer)"),
                             ([], "already holds a training run")):
        command = [str(a) for a in args] + changed
        if not changed:
            command.remove("--resume")
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == files  # nothing touched


# ----------------------------------------------------------------------------------------- concepts


def test_concepts_fit_killed_half_way_leaves_no_folder_and_rerun_completes(assets, tmp_path, capsys):
    """The process is killed while it decodes the last, large image (seen open in /proc/PID/fd): a known point
    inside feature extraction. (A FIFO no longer works as a hold point: the image walk refuses to read one.)"""
    data = tmp_path / "data"
    make_tiny_images(data, count=5)
    noise = np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)
    big = data / "zz_last.png"
    Image.fromarray(noise).save(big, compress_level=0)  # slow to decode: its file stays open a while
    out = tmp_path / "concepts"
    args = ["concepts", "fit", "--backbone", TINY_BACKBONE, "--weights", "none", "--input-size", "64", "--layer",
            "blocks.4", "--data", data, "--n-concepts", "2", "--batch-size", "2", "--out", out, "--quiet"]
    log = tmp_path / "log.txt"
    proc = _start(args, log)

    def decoding_the_last_image() -> bool:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            return any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") == str(big) for fd in fds)
        except OSError:
            return False

    _wait_for(decoding_the_last_image, proc, log)
    assert _interrupt(proc, signal.SIGKILL, log) == -signal.SIGKILL
    assert not out.exists() and not [p for p in tmp_path.glob(".concepts*")]  # no half-written concepts folder

    main([str(a) for a in args])
    capsys.readouterr()
    from featinv.concepts.base import load_decomposer

    decomposer = load_decomposer(out)
    assert decomposer.meta["n_images"] == 6 and decomposer.channels == 112


# --------------------------------------------------------------------------------------------- demo


def test_demo_rerun_reuses_finished_stages_and_resumes_interrupted_ones(tmp_path, monkeypatch):
    """A demo killed after its base stage: the rerun reuses the base, and redoes (resuming) an unfinished stage."""
    import featinv.training.loop as trainer
    from featinv.apps import demo

    settings = demo.DemoSettings(base_steps=2, base_batch=2, seed=0)
    photos = [Image.open(p).convert("RGB") for p in sorted(make_tiny_images(tmp_path / "photos", count=2).iterdir())]
    base_dir = demo._train_base(tmp_path, photos, settings, quiet=True)  # a real (tiny) base stage
    assert trainer.training_status(base_dir)["status"] == "complete"
    weights = (base_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()

    calls: list = []
    monkeypatch.setattr(trainer, "train_base", lambda config, **kw: calls.append(config))
    monkeypatch.setattr(trainer, "train", lambda config, **kw: calls.append(config))
    assert demo._train_base(tmp_path, photos, settings, quiet=True) == base_dir and calls == []  # reused
    assert (base_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights

    # a FeatInv stage that a kill left unfinished ("running" / "interrupted") is trained again, with resume
    for status in ("running", "interrupted"):
        run_dir = tmp_path / "featinv-unpooled"
        run_dir.mkdir(exist_ok=True)
        (run_dir / "train_state.json").write_text(json.dumps({"status": status, "step": 1}))
        demo._train_featinv(tmp_path, base_dir, photos, False, settings, quiet=True)
        assert calls[-1].resume is True and Path(calls[-1].out) == run_dir
    (run_dir / "train_state.json").write_text(json.dumps({"status": "complete", "step": 450}))
    calls.clear()
    demo._train_featinv(tmp_path, base_dir, photos, False, settings, quiet=True)
    assert calls == []


# ------------------------------------------------------------------------------------- atomic writes

#: writes that are allowed outside featinv.io, each with the reason it is safe
ALLOWED_RAW_WRITES = {
    ("featinv/training/run.py", "open"): "metrics.jsonl is append-only and truncated to the checkpoint on resume",
    ("featinv/training/checkpoint.py", "torch.save"): "written into the temporary folder of an atomic_dir",
}


def test_every_file_write_goes_through_featinv_io():
    """No module writes a file directly: every writer uses featinv.io (temp file + rename) or is allow-listed."""
    import ast

    found = []
    for path in sorted((REPO / "featinv").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "featinv/io.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            if name == "open" and not owner:
                modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
                modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
                if not any(set(str(m)) & set("wax+") for m in modes):
                    continue  # reading
                kind = "open"
            elif isinstance(func, ast.Attribute) and name in ("write_text", "write_bytes", "savefig", "save_file",
                                                              "to_csv", "tofile"):  # Path.write_text etc.
                kind = name
            elif name == "save" and owner in ("torch", "np", "numpy"):
                kind = f"{owner}.save"
            else:
                continue
            if (rel, kind) not in ALLOWED_RAW_WRITES:
                found.append(f"{rel}:{node.lineno} {kind}")
    assert not found, "files written without featinv.io (not atomic): " + ", ".join(found)


def test_metrics_log_of_an_attempt_killed_before_its_first_checkpoint_is_not_repeated(assets, tmp_path):
    """kill -9 before the first checkpoint leaves log lines (one cut in half); the restart logs each step once."""
    from featinv.training.config import BaseTrainConfig
    from featinv.training.loop import train_base

    out = tmp_path / "base"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n{"step": 3, "lo')
    train_base(BaseTrainConfig(data=assets["images"], out=out, resolution=32, widths=(8, 16), batch_size=2,
                               max_steps=2, log_every=1, checkpoint_every=100, num_workers=0, progress=False,
                               val_steps=1, num_val_images=1, resume=True))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] < 8.0 for r in records)
