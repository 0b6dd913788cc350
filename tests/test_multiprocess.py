"""Several real processes: ``torchrun --nproc_per_node 2`` and ``accelerate launch --multi_gpu --num_processes 2``
on the CPU (gloo), running ``featinv`` on tiny saved models.

- training: both ranks end with the same weights, which are those of one process with the same global batch
  (equal up to float summation order); a kill -9 of the whole process group, then ``--resume``, logs every
  step once and ends with weights byte-identical to an uninterrupted two-process run; a resume with another
  world size is refused with one line.
- evaluation: sharded over two processes it gives the same rows and the same PNGs as one process.
- reconstruction, sharded over two processes, writes the same PNGs and index as one process and resumes
  with any number of processes.

``accelerate launch --cpu --num_processes 2`` starts a single process unless MPI is set up, hence ``--multi_gpu``, which on
a machine without GPUs runs its processes on the CPU. Each launch costs two interpreter start-ups (~10 s on
an idle machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featinv.cli import main
from featinv.io import load_safetensors
from tests.fixtures_model import TINY_BACKBONE, make_tiny_images, make_tiny_pixel_base, make_tiny_run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not (BIN / "torchrun").exists(),
                                 reason="needs POSIX signals and torchrun"),
              pytest.mark.usefixtures("one_thread")]

#: run by each process: featinv's own CLI, then a hash of the weights this rank trained (ranks must agree)
RANK_DIGEST = """
import hashlib, os, sys
from pathlib import Path
import featinv.training.loop as loop
made = []
class Recorded(loop.FeatInvTask):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append(self)
loop.FeatInvTask = Recorded
from featinv.cli import main
main(sys.argv[1:])
data = b"".join(p.detach().cpu().contiguous().numpy().tobytes() for _, p in made[0].named_trainable())
out = Path(sys.argv[sys.argv.index("--out") + 1])
(out / f"weights-rank{os.environ['RANK']}.sha256").write_text(hashlib.sha256(data).hexdigest())
"""

#: ``featinv`` whose processes stop moving once the first checkpoint is on disk, so the kill below always lands
#: between a checkpoint and the end, however loaded the machine is (the test gates on progress, not timing)
HOLD_AFTER_FIRST_CHECKPOINT = """
import os, sys, time
from pathlib import Path
import featinv.training.loop as loop
checkpoint_steps = loop._validate_and_checkpoint
def hold_after_first(run):
    checkpoint_steps(run)
    if run.last_saved > 0:  # -1 until the first checkpoint
        (Path(__file__).parent / f"held-{os.getpid()}.pid").write_text(str(os.getpid()))
        time.sleep(3600)
loop._validate_and_checkpoint = hold_after_first
from featinv.cli import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multiprocess")
    for label in ("a", "b"):
        make_tiny_images(root / "val" / label, count=2)
    return {"root": root, "run": make_tiny_run(root), "base": make_tiny_pixel_base(root, name="base16"),
            "images": make_tiny_images(root / "images", count=8), "val": root / "val"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _torchrun(target: list, log: Path) -> subprocess.Popen:
    """Two processes under torchrun, in a process group of their own (so kill -9 reaches every one)."""
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), *map(str, target)]
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)


def _accelerate(featinv_args: list, log: Path) -> subprocess.Popen:
    """``featinv ARGS`` in two processes under accelerate launch (torchrun's own parser would take ``--run``
    for an abbreviation of its ``--run-path``)."""
    command = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "featinv", *map(str, featinv_args)]
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the processes did not finish:\n{log.read_text()[-3000:]}")
    assert code == 0, log.read_text()[-3000:]


def _kill_9_everything(proc: subprocess.Popen, held: Path, ranks: int) -> None:
    """SIGKILL the launcher's process group and every rank held at its checkpoint (torchrun starts the ranks in
    their own sessions, so killing the group alone leaves them), and wait until they are gone."""
    deadline = time.monotonic() + 600
    while len(list(held.glob("held-*.pid"))) < ranks:  # every rank has reached the hold
        assert time.monotonic() < deadline and proc.poll() is None, "the ranks never reached the hold"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    pids = [int(path.read_text()) for path in held.glob("held-*.pid")]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "a killed rank is still running"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _checkpoint_steps(out: Path) -> list[int]:
    root = out / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("step-*") if (p / "state.json").is_file()) \
        if root.is_dir() else []


def _weights(out: Path) -> dict[str, bytes]:
    newest = out / "checkpoints" / f"step-{_checkpoint_steps(out)[-1]:08d}" / "trainable.safetensors"
    return {k: v.numpy().tobytes() for k, v in load_safetensors(newest).items()}


def _assert_same_weights(got: dict[str, bytes], expected: dict[str, bytes]) -> None:
    """Equal up to float summation order (two processes average their gradients in another order than one
    process sums them): far below what different noise moves (about the learning rate, 1e-3, per step)."""
    import numpy as np

    assert got.keys() == expected.keys()
    worst = max(float(np.abs(np.frombuffer(got[k], np.float32) - np.frombuffer(expected[k], np.float32)).max())
                for k in got)
    assert worst < 1e-6, f"weights differ by up to {worst:.2e}"


def test_two_processes_agree_resume_after_kill_9_and_refuse_another_world_size(assets, tmp_path, capsys):
    total = 8
    train = ["train", "--data", assets["images"], "--backbone", TINY_BACKBONE, "--weights", "none", "--input-size",
             "64", "--layer", "blocks.4", "--base", f"pixel:{assets['base']}", "--max-steps", total, "--batch-size",
             "2", "--checkpoint-every", "2", "--log-every", "1", "--num-workers", "0", "--val-steps", "1", "--quiet"]
    driver = tmp_path / "rank_digest.py"
    driver.write_text(RANK_DIGEST)
    holding = tmp_path / "hold_after_first_checkpoint.py"
    holding.write_text(HOLD_AFTER_FIRST_CHECKPOINT)

    # 1. an uninterrupted two-process run: both ranks end with the same weights
    reference = tmp_path / "reference"
    proc = _torchrun([driver, *train, "--out", reference], tmp_path / "reference.log")
    _finish(proc, tmp_path / "reference.log")
    digests = {(reference / f"weights-rank{rank}.sha256").read_text() for rank in (0, 1)}
    assert len(digests) == 1, "the two ranks trained different weights"
    assert hashlib.sha256(b"".join(_weights(reference).values())).hexdigest()  # the checkpoint is readable

    # 1b. one process with the same global batch (2 x 2) trains the same weights: each sample's noise, timestep
    # and dropout depend on its place in the global batch, not on the process that holds it
    single = tmp_path / "single"
    batch = train.index("--batch-size") + 1
    main([str(a) for a in [*train[:batch], 4, *train[batch + 1:], "--out", single]])
    _assert_same_weights(_weights(single), _weights(reference))

    # 2. the same run, killed (-9, every process) once a checkpoint exists, then resumed by the same command
    out = tmp_path / "killed"
    log = tmp_path / "killed.log"
    proc = _torchrun([holding, *train, "--out", out, "--resume"], log)
    deadline = time.monotonic() + 600
    while not _checkpoint_steps(out):
        assert proc.poll() is None, f"ended before its first checkpoint:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no checkpoint:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)
    _kill_9_everything(proc, held=tmp_path, ranks=2)
    assert _checkpoint_steps(out)[-1] < total, "the kill came too late to test resuming"
    proc = _torchrun(["-m", "featinv", *train, "--out", out, "--resume"], tmp_path / "resumed.log")
    _finish(proc, tmp_path / "resumed.log")
    state = json.loads((out / "train_state.json").read_text())
    assert state["status"] == "complete" and state["step"] == total
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, total + 1))  # every step logged exactly once across both attempts
    assert _weights(out) == _weights(reference)  # byte-identical to the uninterrupted run

    # 3. resuming the two-process run with one process is refused: the data order depends on the world size
    shutil.rmtree(out / "checkpoints" / f"step-{total:08d}")
    def files() -> dict[Path, int]:  # (the lock file of the refused command is the one new file)
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if not p.name.startswith(".featinv.lock")}

    before = files()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*train, "--out", out, "--resume"]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "settings changed (world_size)" in err and len(err.strip().splitlines()) == 1
    assert files() == before  # nothing touched


def test_sharded_eval_over_two_processes_equals_one_process(assets, tmp_path, capsys):
    args = ["eval", "--run", assets["run"], "--data", assets["val"], "--per-class", "2", "--steps", "2",
            "--batch-size", "1", "--fid", "none", "--quiet"]
    sharded = tmp_path / "sharded"
    _finish(_accelerate([*args, "--out", sharded], tmp_path / "sharded.log"), tmp_path / "sharded.log")
    assert sorted(p.name for p in sharded.glob("index*.json")) == ["index-rank0-of-2.json", "index-rank1-of-2.json"]

    single = tmp_path / "single"
    main([str(a) for a in [*args, "--out", single]])
    rows = {json.dumps(r, sort_keys=True) for r in json.loads((single / "metrics.json").read_text())["rows"]}
    sharded_rows = json.loads((sharded / "metrics.json").read_text())["rows"]
    assert len(sharded_rows) == 4 and {json.dumps(r, sort_keys=True) for r in sharded_rows} == rows
    assert {p.name: p.read_bytes() for p in (sharded / "images").glob("*.png")} == \
        {p.name: p.read_bytes() for p in (single / "images").glob("*.png")}


def _reconstructions(out: Path) -> tuple[dict[str, bytes], list[dict]]:
    """The PNGs (name -> bytes) and the index rows of a reconstruction folder."""
    return ({p.name: p.read_bytes() for p in out.glob("*.png")},
            json.loads((out / "index.json").read_text())["items"])


def _write_index(folder: Path, name: str, template: dict, rows: list[dict]) -> None:
    (folder / name).write_text(json.dumps({**template, "items": rows}))


def test_sharded_reconstruct_over_two_processes_equals_one_process_and_resumes_with_any_count(assets, tmp_path):
    """Each rank reconstructs its shard of the images (all seeds of an image on one rank) into its own index
    part; rank 0 merges the parts. The PNGs are byte-identical to one process's, the index lists every output
    once, and a folder resumes with any number of processes (the image is the unit of work). One launch: it
    finishes a folder that an interrupted one-process run and a killed three-process run left behind."""
    args = ["reconstruct", "--run", assets["run"], "--images", assets["images"], "--steps", "1", "--seeds", "0,1",
            "--batch-size", "2", "--quiet"]
    single = tmp_path / "single"
    main([str(a) for a in [*args, "--out", single]])
    pngs, rows = _reconstructions(single)
    assert len(pngs) == 16 and len(rows) == 16
    by_file = {row["file"]: row for row in rows}
    template = json.loads((single / "index.json").read_text())

    # what was left: 2 of 8 images done (one listed in index.json, one in a killed 3-process run's part)
    sharded = tmp_path / "sharded"
    shutil.copytree(single, sharded)
    images = sorted({name.rsplit("_s", 1)[0] for name in pngs})
    kept = {image: [f"{image}_s0.png", f"{image}_s1.png"] for image in images[1::5]}
    for name in set(pngs) - {name for names in kept.values() for name in names}:
        (sharded / name).unlink()
    (first, first_files), (second, second_files) = kept.items()
    _write_index(sharded, "index.json", template, [by_file[f] for f in first_files])
    _write_index(sharded, "index-rank2-of-3.json", template, [by_file[f] for f in second_files])
    before = {p.name: p.stat().st_mtime_ns for p in sharded.glob("*.png")}
    proc = _accelerate([*args, "--out", sharded], tmp_path / "sharded.log")
    _finish(proc, tmp_path / "sharded.log")
    assert _reconstructions(sharded) == (pngs, rows)  # same bytes, every output listed once
    assert {p.name: p.stat().st_mtime_ns for p in sharded.glob("*.png") if p.name in before} == before  # not redone
    assert not list(sharded.glob("index-rank*")) and not [p for p in sharded.rglob(".*") if ".tmp" in p.name]

    # parts left by a killed two-process run (one output lost, half the rows only in a part), finished by one
    listed = sorted(by_file)
    _write_index(sharded, "index-rank1-of-2.json", template, [by_file[f] for f in listed[8:]])
    _write_index(sharded, "index.json", template, [by_file[f] for f in listed[:8]])
    (sharded / listed[-1]).unlink()
    main([str(a) for a in [*args, "--out", sharded]])
    assert _reconstructions(sharded) == (pngs, rows) and not list(sharded.glob("index-rank*"))


def test_a_single_process_command_and_a_multi_process_run_refuse_each_other(tmp_path, monkeypatch):
    """Rank 0 of a launched run holds the folder's own lock and the other ranks their rank's: no rank is refused
    for its siblings' locks, and a plain command on the same folder is refused while the run holds it."""
    from featinv.io import output_lock

    out = tmp_path / "out"
    take = "import sys\nfrom featinv.io import output_lock\nwith output_lock(sys.argv[1]): print('took it')"

    def other_process(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", take, str(out)], env={**_env(), **env}, capture_output=True,
                              text=True, timeout=300)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with output_lock(out, command="featinv reconstruct (rank 0)"):
        sibling = other_process(WORLD_SIZE="2", RANK="1")
        assert sibling.returncode == 0 and "took it" in sibling.stdout, sibling.stderr[-2000:]
        plain = other_process(WORLD_SIZE="1", RANK="0")
        assert plain.returncode != 0 and "is in use by `featinv reconstruct (rank 0)`" in plain.stderr
