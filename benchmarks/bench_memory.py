"""Peak memory of `featinv reconstruct` and `featinv eval` over growing folders: it must stay flat, not grow
with the image count.

Builds a tiny saved run (timm:tf_efficientnet_lite0 with random weights at 64 px, the 16 px pixel base, conv
encoder: the test suite's model; nothing is downloaded), writes N small random PNGs for each N in
``--counts`` and runs the real CLI (``python -m featinv reconstruct`` / ``eval``) once per folder and command
in a fresh process. The peak resident set size of that process (``wait4``'s ``ru_maxrss``, Linux/macOS) is
reported per N, with the growth from the smallest to the largest folder, as one JSON line per command. One
denoising step keeps it quick: memory per batch does not depend on the step count, and the index, the image
list, the metric rows and the outputs grow with N all the same. ``eval`` scores every image of the folder
(``--per-class N``) without FID (``--fid none``: FID's feature statistics are a fixed-size matrix).

    nice -n 15 python benchmarks/bench_memory.py --counts 100 1000 --jsonl benchmarks/results/memory-cpu.jsonl
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine  # noqa: E402


def build_run(folder: Path) -> Path:
    """The test suite's tiny run, saved (random lite0 at 64 px + a saved 16 px pixel base)."""
    import torch

    from featinv.diffusion.bases import PixelBase
    from featinv.diffusion.model import FeatInv

    base = PixelBase.create(resolution=16, widths=(8, 16), cross_attention_dim=8, attention_head_dim=4, seed=0)
    base_dir = base.save_pretrained(folder / "pixel_base")
    torch.manual_seed(0)
    model = FeatInv.create("timm:tf_efficientnet_lite0", f"pixel:{base_dir}", encoder="conv",
                           encoder_kwargs={"hidden": 8}, backbone_weights="none", input_size=64)
    return model.save_pretrained(folder / "run")


def write_images(folder: Path, count: int, size: int = 24, seed: int = 0) -> Path:
    """``count`` small random RGB PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")
    return folder


def peak_rss(args: list[str], threads: int) -> dict[str, Any]:
    """Run ``python -m featinv ARGS`` and return its exit code, wall time and peak RSS in MiB."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "featinv", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    error = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
    # ru_maxrss is KiB on Linux, bytes on macOS
    mib = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mib": round(mib, 1), **({"stderr": error} if proc.returncode else {})}


COMMANDS = ("reconstruct", "eval")


def command_args(command: str, run: Path, images: Path, out: Path, count: int) -> list[str]:
    """The CLI arguments that process every image of ``images`` once (eval: all of them, no FID)."""
    if command == "reconstruct":
        return ["reconstruct", "--run", str(run), "--images", str(images), "--out", str(out)]
    return ["eval", "--run", str(run), "--data", str(images), "--out", str(out), "--per-class", str(count),
            "--fid", "none"]


def written_images(command: str, out: Path) -> int:
    """How many PNGs the command wrote (eval keeps them under ``images/``)."""
    return len(list((out if command == "reconstruct" else out / "images").glob("*.png")))


def measure(counts: list[int], batch_size: int = 16, steps: int = 1, threads: int = 1, workdir: Path | None = None,
            command: str = "reconstruct") -> dict[str, Any]:
    """Peak RSS of one ``command`` process per folder size; ``growth_mib`` is largest minus smallest."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        run = build_run(root)
        rows = []
        for count in counts:
            images = write_images(root / f"images-{count}", count)
            out = root / f"out-{count}"
            result = peak_rss([*command_args(command, run, images, out, count), "--steps", str(steps),
                               "--batch-size", str(batch_size), "--quiet"], threads)
            rows.append({"images": count, "written": written_images(command, out), **result})
    peaks = [r["peak_rss_mib"] for r in rows]
    return {"benchmark": "memory", "command": f"featinv {command}", "batch_size": batch_size, "steps": steps,
            "threads": threads, "rows": rows, "growth_mib": round(peaks[-1] - peaks[0], 1),
            "growth_ratio": round(peaks[-1] / peaks[0], 3), "machine": machine()}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000], help="folder sizes, ascending")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS),
                        help="the featinv commands to measure (one JSON line each)")
    parser.add_argument("--jsonl", type=Path, default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    reports = []
    for command in args.commands:
        report = measure(sorted(args.counts), batch_size=args.batch_size, steps=args.steps, threads=args.threads,
                         command=command)
        print(f"# featinv {command}: peak RSS x{report['growth_ratio']} from {report['rows'][0]['images']} to "
              f"{report['rows'][-1]['images']} images ({report['growth_mib']:+} MiB)", file=sys.stderr, flush=True)
        reports.append(emit(report, args.jsonl))
    return reports


if __name__ == "__main__":
    main()
