"""One line, never a traceback: a run's ``config.json`` is checked against its schema, every bound is checked
up front, wrong-shaped weight tensors are named, and a full disk while a checkpoint is written leaves an
honest ``train_state.json`` and a run that resumes.

The full disk is real where the tests may mount (root, or CAP_SYS_ADMIN): a tmpfs just big enough for one
checkpoint is mounted into ``tmp_path``, filled by training until a checkpoint does not fit (once in its
weights, once in its optimizer state), then remounted bigger for ``--resume``; elsewhere that test skips with
one line. The injected ``ENOSPC`` test (``torch.save`` raising) runs everywhere.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from featinv.cli import main
from featinv.errors import FeatinvError
from featinv.io import load_safetensors, save_safetensors
from tests.cli_run import one_line_error
from tests.fixtures_model import TINY_BACKBONE, make_tiny_images, make_tiny_pixel_base, make_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bounds")
    return {"root": root, "run": make_tiny_run(root), "base": make_tiny_pixel_base(root, name="base16"),
            "images": make_tiny_images(root / "images", count=4)}


def _edited_run(assets: dict[str, Path], tmp_path: Path, edit) -> Path:
    run = tmp_path / "run"
    shutil.copytree(assets["run"], run)
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))
    return run


# ---------------------------------------------------------------------------------- run config schema

def _set(path: str, value):
    def edit(config: dict) -> None:
        *parents, key = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    return edit


def _drop(path: str):
    def edit(config: dict) -> None:
        *parents, key = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        del node[key]
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_set("pooled", "no"), "'pooled' must be true or false, got \"no\""),
    (_set("guidance_scale", "high"), "'guidance_scale' must be a finite number >= 0"),
    (_set("guidance_scale", -1), "'guidance_scale' must be a finite number >= 0, got -1"),
    (_set("backbone.channels", "1280"), "'backbone.channels' must be an integer >= 1, got \"1280\""),
    (_set("backbone.grid", [2]), "'backbone.grid' must be a list of two integers >= 1"),
    (_set("backbone.layer", 4), "'backbone.layer' must be a string"),
    (_set("base.latent_size", 1.5), "'base.latent_size' must be an integer >= 1"),
    (_set("base", "pixel"), "'base' must be an object"),
    (_set("format_version", 99), "written by a newer featinv (format 99)"),
    (_drop("backbone.channels"), "is incomplete: key 'backbone.channels' is missing"),
    (_drop("base"), "is incomplete: key 'base' is missing"),
    (_set("poold", True), "unknown key 'poold'"),
    (_set("backbone.wieghts", "none"), "unknown key 'backbone.wieghts'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_run_config_is_checked_against_its_schema(assets, tmp_path, edit, message):
    from featinv.diffusion.model import FeatInv

    run = _edited_run(assets, tmp_path, edit)
    with pytest.raises(FeatinvError, match="fix the value by hand or retrain the run|upgrade featinv") as info:
        FeatInv.from_pretrained(run)
    assert message in str(info.value) and str(run / "config.json") in str(info.value)


def test_a_wrong_typed_config_is_one_line_on_the_cli(assets, tmp_path, capsys):
    run = _edited_run(assets, tmp_path, _set("pooled", "no"))
    err = one_line_error(["reconstruct", "--run", run, "--images", assets["images"], "--out", tmp_path / "o",
                           "--steps", "1", "--quiet"], capsys)
    assert "'pooled' must be true or false" in err and not (tmp_path / "o").exists()


def test_the_configs_featinv_writes_pass_the_schema(assets):
    from featinv.diffusion.model import FeatInv

    assert FeatInv.from_pretrained(assets["run"]).pooled is False


# --------------------------------------------------------------------------------------------- bounds

@pytest.mark.parametrize(("extra", "message"), [
    (["--val-steps", "1001"], "Invalid value for '--val-steps'"),
    (["--epochs", "inf"], "Invalid value for '--epochs'"),
    (["--epochs", "nan"], "Invalid value for '--epochs'"),
    (["--epochs", "-1"], "Invalid value for '--epochs'"),
])
def test_training_bounds_are_refused_before_anything_runs(assets, tmp_path, capsys, extra, message):
    out = tmp_path / "train"
    err = one_line_error(["train", "--data", assets["images"], "--out", out, "--backbone", TINY_BACKBONE,
                           "--weights", "none", "--input-size", "64", "--base", f"pixel:{assets['base']}", *extra],
                          capsys)
    assert message in err and not out.exists()


def test_val_steps_beyond_the_timesteps_fail_up_front_in_the_api():
    from featinv.training.config import TrainConfig

    with pytest.raises(FeatinvError, match="val-steps must be an integer from 1 to 1000"):
        TrainConfig(out="unused", val_steps=1001).check()
    with pytest.raises(FeatinvError, match="epochs must be a finite number"):
        TrainConfig(out="unused", epochs=float("inf")).check()


def test_layers_input_size_is_bounded(capsys):
    err = one_line_error(["layers", TINY_BACKBONE, "--input-size", "100000"], capsys)
    assert "Invalid value for '--input-size'" in err and "4096" in err
    from featinv.features.backbone import backbone

    with pytest.raises(FeatinvError, match="input size must be an integer from 8 to 4096, got 100000"):
        backbone(TINY_BACKBONE, weights="none", input_size=100000)


# --------------------------------------------------------------------------------- wrong-shaped tensors

def test_wrong_shaped_controlnet_weights_are_one_line(assets, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(assets["run"], run)
    weights = run / "controlnet" / "diffusion_pytorch_model.safetensors"
    tensors = load_safetensors(weights)
    name = next(k for k, v in tensors.items() if v.ndim == 4)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
    save_safetensors(tensors, weights)  # checksum recomputed: only the shape is wrong
    err = one_line_error(["reconstruct", "--run", run, "--images", assets["images"], "--out", tmp_path / "o",
                           "--steps", "1", "--quiet"], capsys)
    assert "ControlNet weights in" in err and "size mismatch" in err and name in err


def test_wrong_shaped_prompt_table_is_one_line(assets, tmp_path):
    from featinv.diffusion.bases import PixelBase

    base = tmp_path / "base"
    shutil.copytree(assets["base"], base)
    save_safetensors({"prompt_embeds": torch.zeros(2, 2, 5)}, base / "prompts.safetensors")
    with pytest.raises(FeatinvError, match=r"has shape \(2, 2, 5\), not \[2, tokens, 8\]"):
        PixelBase.from_pretrained(base)
    save_safetensors({"other": torch.zeros(2, 2, 8)}, base / "prompts.safetensors")
    with pytest.raises(FeatinvError, match="has no 'prompt_embeds' tensor"):
        PixelBase.from_pretrained(base)


# ------------------------------------------------------------------------------------------ full disk

def _assert_full_disk_left_the_first_checkpoint(args: list, out: Path, capsys) -> None:
    """The training command fails with the full-disk line, and the run is honest: status failed, the first
    checkpoint whole (its checksum holds), no half second checkpoint, no temp leftovers."""
    from featinv.training.checkpoint import WEIGHTS_FILE

    err = one_line_error(args, capsys)
    assert "the disk is full" in err and "free some space" in err
    state = json.loads((out / "train_state.json").read_text())
    assert state["status"] == "failed" and "No space left" in state["error"]
    assert Path(state["checkpoint"]).name == "step-00000001"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]  # no half checkpoint
    assert load_safetensors(out / "checkpoints" / "step-00000001" / WEIGHTS_FILE)
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name]


def test_a_full_disk_while_checkpointing_is_one_line_and_the_run_resumes(assets, tmp_path, capsys, monkeypatch):
    import featinv.training.checkpoint as checkpoint

    out = tmp_path / "train"
    args = ["train", "--data", assets["images"], "--out", out, "--backbone", TINY_BACKBONE, "--weights", "none",
            "--input-size", "64", "--layer", "blocks.4", "--base", f"pixel:{assets['base']}", "--max-steps", "3",
            "--batch-size", "2", "--checkpoint-every", "1", "--log-every", "1", "--num-workers", "0",
            "--val-steps", "1", "--quiet", "--resume"]
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: the disk is full half-way through the file
            Path(path).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_fills)
    _assert_full_disk_left_the_first_checkpoint(args, out, capsys)

    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    main([str(a) for a in args])
    state = json.loads((out / "train_state.json").read_text())
    assert state["status"] == "complete" and state["step"] == 3
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A tmpfs mounted at ``tmp_path/disk`` (resize it with :func:`_resize`); skips where mounting is not allowed.
    Always unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("a real small file system needs the mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "featinv-test", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # busy: detach now, free when closed


def _resize(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True, capture_output=True)


#: a checkpoint of the tiny run is ~35.5 MB (11.8 MB of weights, 23.7 MB of optimizer state); one fits, the next
#: one fails in its weights (42m) or in its optimizer state (56m)
@pytest.mark.parametrize("size", ["42m", "56m"], ids=["full-in-weights", "full-in-optimizer-state"])
def test_a_real_full_disk_while_checkpointing_is_one_line_and_the_run_resumes(assets, small_disk, size, capsys):
    _resize(small_disk, size)
    out = small_disk / "train"
    args = ["train", "--data", assets["images"], "--out", out, "--backbone", TINY_BACKBONE, "--weights", "none",
            "--input-size", "64", "--layer", "blocks.4", "--base", f"pixel:{assets['base']}", "--max-steps", "2",
            "--batch-size", "2", "--checkpoint-every", "1", "--log-every", "1", "--num-workers", "0",
            "--val-steps", "1", "--quiet", "--resume"]
    _assert_full_disk_left_the_first_checkpoint(args, out, capsys)

    _resize(small_disk, "200m")  # space freed: the same command resumes from step 1 and finishes
    main([str(a) for a in args])
    state = json.loads((out / "train_state.json").read_text())
    assert state["status"] == "complete" and state["step"] == 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_the_status_file_is_removed_when_even_it_cannot_be_written(assets, tmp_path, monkeypatch):
    """When the failure record itself hits the full disk, no status beats a stale "running"."""
    from types import SimpleNamespace

    from featinv.training import loop

    out = tmp_path / "run"
    out.mkdir()
    (out / "train_state.json").write_text('{"status": "running"}')

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    run = SimpleNamespace(ckpt_root=out / "checkpoints", step=2, is_main=True, out=out, write_state=full)
    loop._record_failure(run, OSError(errno.ENOSPC, "No space left on device"))
    assert not (out / "train_state.json").exists()


def test_other_os_errors_keep_their_traceback():
    from featinv.cli.boundary import disk_error_line

    assert disk_error_line(OSError(errno.ENOSPC, "full", "/x/y.png")).startswith("the disk is full writing /x/y.png")
    assert disk_error_line(OSError(errno.EACCES, "denied")) is None
