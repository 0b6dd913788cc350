"""Feature-guidance strength sweep on a trained demo model: fidelity against honest checks, and time.

Rebuilds the demo's held-out crops (``featinv.apps.demo._held_out_crops``: the stream training never draws
from), reconstructs the first ``--n`` of them at each strength with the same seeds, and records per
strength: the cosine at the conditioned layer (median over positions, mean over images — evaluation's
score), top-5 / top-1 match of the classifier, and the checks guidance cannot game through the backbone:
pixel MSE and SSIM against the original crops, and the high-frequency energy of the images relative to the
originals' (adversarial textures raise it). Agreement at the guided layer and the top-5 follow from each
other, so only the pixel checks (and the figure) tell a better image from a backbone being fooled.

Writes ``OUT.json`` (machine, settings, one row per strength), ``OUT.md`` (the table) and ``OUT.png``
(originals above each strength's reconstructions).

Example (the demo's unpooled model, as in docs/guidance.md)
  python benchmarks/bench_guidance.py --run featinv-demo/featinv-unpooled --n 32 --steps 25 \\
      --strengths 0 0.05 0.1 0.15 0.3 --threads 2 --out benchmarks/results/guidance-cpu-2026-12-01
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (the benchmarks folder, put on sys.path just above)

from featinv.evaluation.pixel_checks import high_frequency, ssim  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a demo FeatInv run folder (featinv-unpooled)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="instead of running: join the rows of earlier outputs (strengths run in parallel "
                        "processes, same settings) into --out .json/.md")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.json/.md/.png)")
    parser.add_argument("--n", type=int, default=32, help="held-out crops to reconstruct (the demo has 128)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (the demo: 25)")
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.15, 0.3])
    parser.add_argument("--schedule", default="all", help="guidance schedule: all, ramp, first:K, last:K")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (crops and sampling)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--figure-images", type=int, default=8, help="originals shown in the figure")
    return parser


def held_out(n: int, seed: int) -> list[Any]:
    """The demo's held-out crops (all 128 drawn, then the first ``n``: the stream is the demo's own)."""
    from featinv.apps.demo import DemoSettings, _held_out_crops
    from featinv.data import builtin_photos

    crops = _held_out_crops(builtin_photos(), DemoSettings().held_out, seed)
    return [crop for _, crop in crops[:n]]


def ssim_mean(images: torch.Tensor, originals: torch.Tensor) -> float:
    return float(ssim(images, originals).mean())


def score(model: Any, images: torch.Tensor, originals: torch.Tensor, f_orig: torch.Tensor,
          logits_orig: torch.Tensor) -> dict[str, float]:
    """Evaluation's cosine and top-k (the backbone's own resize + normalisation) and the pixel checks."""
    from featinv.evaluation import metrics

    backbone = model.backbone
    with torch.no_grad():
        f_rec, logits_rec = backbone.features_and_logits(backbone.normalize(images))
    return {
        "cosine": float(metrics.cosine_median(f_orig, f_rec).mean()),
        "top5": float(metrics.topk_match(logits_orig, logits_rec, 5).float().mean()),
        "top1": float(metrics.topk_match(logits_orig, logits_rec, 1).float().mean()),
        "pixel_mse": float((images - originals).pow(2).mean()),
        "ssim": float(ssim_mean(images, originals)),
        "high_freq_ratio": float(high_frequency(images).mean() / high_frequency(originals).mean()),
    }


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [f"Feature guidance sweep: {settings['run']}, {settings['n']} held-out crops, "
             f"{settings['scheduler']} {settings['steps']} steps, schedule {settings['schedule']}, "
             f"{settings['threads']} CPU threads", "",
             "| strength | cosine | top-5 | top-1 | pixel MSE | SSIM | high-freq ratio | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strength']:g} | {r['cosine']:.3f} | {r['top5']:.0%} | {r['top1']:.0%} | "
                     f"{r['pixel_mse']:.4f} | {r['ssim']:.3f} | {r['high_freq_ratio']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """One report from parts that ran the same settings on different strengths."""
    from featinv.io import read_json, write_json

    parts = [read_json(p, what="guidance benchmark") for p in paths]
    rows = sorted((row for part in parts for row in part["results"]), key=lambda row: row["strength"])
    settings = {k: v for k, v in parts[0]["settings"].items() if k != "load_average_1min_at_end"}
    settings["parts"] = [{"file": p.name, "strengths": [r["strength"] for r in part["results"]],
                          "load_average_1min_at_end": part["settings"].get("load_average_1min_at_end")}
                         for p, part in zip(paths, parts, strict=True)]
    report = {**parts[0], "settings": settings, "results": rows}
    write_json(out.with_suffix(".json"), report)
    out.with_suffix(".md").write_text(markdown(rows, settings))
    print(markdown(rows, settings))
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.run is None:
        raise SystemExit("pass --run RUN_DIR (or --merge JSON...)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from featinv.apps.demo import _backbone
    from featinv.data import to_pil, to_tensor01
    from featinv.diffusion.guidance import FeatureGuidance
    from featinv.diffusion.model import FeatInv
    from featinv.io import write_json
    from featinv.report.figures import image_grid

    model = FeatInv.from_pretrained(args.run, backbone=_backbone())
    crops = held_out(args.n, args.seed)
    originals = torch.stack([to_tensor01(c) for c in crops])
    with torch.no_grad():
        f_orig, logits_orig = model.backbone.features_and_logits(model.backbone.preprocess(crops))
    cond = f_orig.mean(dim=(2, 3), keepdim=True).expand_as(f_orig) if model.pooled else f_orig
    rows, pictures = [], {}
    for strength in args.strengths:
        guidance = FeatureGuidance(strength=strength, schedule=args.schedule)
        start = time.perf_counter()
        rec = model.reconstruct(features=cond, seeds=[args.seed], steps=args.steps, scheduler=args.scheduler,
                                batch_size=args.batch_size, progress=False, feature_guidance=guidance)
        seconds = time.perf_counter() - start
        rows.append({"strength": strength, **score(model, rec.images, originals, f_orig, logits_orig),
                     "seconds": seconds})
        pictures[strength] = rec.images[:args.figure_images]
        print(rows[-1], flush=True)
    settings = {"run": str(args.run), "n": len(crops), "steps": args.steps, "scheduler": args.scheduler,
                "schedule": args.schedule, "seed": args.seed, "threads": torch.get_num_threads(),
                "guidance_scale": model.guidance_scale, "pooled": model.pooled,
                "load_average_1min_at_end": os.getloadavg()[0]}  # other work on the machine stretches the seconds
    report = {"benchmark": "guidance", "machine": common.machine(), "settings": settings, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), report)
    args.out.with_suffix(".md").write_text(markdown(rows, settings))
    grid = [[to_pil(img) for img in originals[:args.figure_images]]]
    grid += [[to_pil(img) for img in pictures[s]] for s in args.strengths]
    image_grid(grid, args.out.with_suffix(".png"), row_labels=["original"] + [f"s={s:g}" for s in args.strengths])
    print(markdown(rows, settings))
    return report


if __name__ == "__main__":
    main()
