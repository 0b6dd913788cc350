"""Reconstruct every image in a folder with a trained FeatInv run, and score each reconstruction.

    python examples/reconstruct_folder.py --run runs/convnext --images photos/ --out recon/ --seeds 0,1

For every image and seed it writes ``<name>_s<seed>.png`` plus ``index.json`` (through
:func:`featinv.reconstruct_images`, so an interrupted run resumes). Then it feeds each reconstruction back
through the backbone and reports the paper's reconstruction metrics per image: the median over positions
of the cosine similarity between the original's and the reconstruction's feature maps, and whether the
original's top-1 class is among the reconstruction's top-5 / is its top-1. The scores go to
``OUT/scores.json`` as well.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch


def build_parser() -> argparse.ArgumentParser:
    """The script's options (the docs tests check every option the docs mention against it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="FeatInv run folder (written by `featinv train`)")
    parser.add_argument("--images", type=Path, required=True, help="image folder (searched recursively) or file")
    parser.add_argument("--out", type=Path, required=True, help="output folder for PNGs, index.json, scores.json")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one reconstruction each (default 0)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (paper: 50 DDIM steps)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the run's)")
    parser.add_argument("--scheduler", default="ddim", help="ddim, dpm++ or unipc")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv=None``: sys.argv); tests pass their own list."""
    return build_parser().parse_args(argv)


@torch.no_grad()
def score(model: Any, original: Any, reconstruction: Any) -> dict[str, Any]:
    """Cosine-sim (median over positions) and top-5/top-1 match of one reconstruction against its original.

    Feature maps are compared unpooled, also for pooled runs: the question is how much of the original
    spatial map the reconstruction recovers.
    """
    import featinv

    x = model.backbone.preprocess([original, reconstruction])   # resized to the backbone's input size
    features, logits = model.backbone.features_and_logits(x)
    return {
        "cosine": float(featinv.cosine_median(features[:1], features[1:])[0]),
        "top5_match": bool(featinv.topk_match(logits[:1], logits[1:], 5)[0]),
        "top1_match": bool(featinv.topk_match(logits[:1], logits[1:], 1)[0]),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Reconstruct the folder, score every reconstruction, write scores.json; returns the rows."""
    args = parse_args(argv)
    import featinv
    from featinv.data import open_image
    from featinv.io import read_json, write_json

    model = featinv.FeatInv.from_pretrained(args.run, device=args.device)
    print(model)
    summary = featinv.reconstruct_images(model, args.images, args.out, seeds=[int(s) for s in args.seeds.split(",")],
                                         guidance_scale=args.guidance, steps=args.steps, scheduler=args.scheduler,
                                         batch_size=args.batch_size, device=args.device, progress=not args.quiet)
    print(f"{len(summary.written)} reconstructions written, {len(summary.skipped)} already there")
    for path in summary.unreadable:
        print(f"skipped unreadable image {path}")

    rows = []
    for entry in read_json(summary.index_path, what="reconstruction index")["items"]:
        numbers = score(model, open_image(entry["source"]), open_image(args.out / entry["file"]))
        rows.append({"file": entry["file"], "source": entry["source"], "seed": entry["seed"], **numbers})
        print(f"{entry['file']:40s} cosine {numbers['cosine']:.3f}  top-5 match {numbers['top5_match']!s:5s}  "
              f"top-1 match {numbers['top1_match']}")
    if rows:
        mean_cos = sum(r["cosine"] for r in rows) / len(rows)
        top5 = sum(r["top5_match"] for r in rows) / len(rows)
        top1 = sum(r["top1_match"] for r in rows) / len(rows)
        print(f"mean cosine {mean_cos:.3f}, top-5 match {top5:.0%} (top-1 {top1:.0%}) over {len(rows)} reconstructions")
    write_json(args.out / "scores.json", {"run": str(args.run), "items": rows})
    return rows


if __name__ == "__main__":
    main()
