"""Spatial composition: paste a region of image B's feature map into image A's and reconstruct (paper Figure 10).

    python examples/compose.py --run runs/convnext --image-a street.jpg --image-b dog.jpg --out compose/ \\
        --region center --region top-left

Regions are names (top-left, top-right, bottom-left, bottom-right, center, left, right, top, bottom, full),
feature-grid cells ``x0,y0,x1,y1`` as integers, or image fractions as floats in [0, 1]. The analysis
writes a figure with each region outlined plus the cosine similarity between every composed map and its
reconstruction's features. The second half does the same edit by hand with the building blocks
(``model.features`` -> ``compose_maps`` -> ``model.reconstruct``) for the first region, to show how to
edit feature maps yourself; because a sample depends only on its feature map and its seed, it matches
the analysis' composite.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    """The script's options (the docs tests check every option the docs mention against it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="unpooled FeatInv run folder")
    parser.add_argument("--image-a", type=Path, required=True, help="image A (the map that is edited)")
    parser.add_argument("--image-b", type=Path, required=True, help="image B (where the pasted region comes from)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--region", action="append", default=None,
                        help="region to take from B (repeatable; default: center)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the run's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv=None``: sys.argv); tests pass their own list."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the composition analysis, then redo its first edit by hand; returns both and their difference."""
    args = parse_args(argv)
    import featinv
    from featinv.analyses.compose import compose_maps, parse_region
    from featinv.data import open_image, to_pil
    from featinv.io import atomic_write

    regions = args.region or ["center"]
    model = featinv.FeatInv.from_pretrained(args.run, device=args.device)

    # 1. The analysis in one call: figure + numbers for every region.
    result = featinv.compose(model, args.image_a, args.image_b, out_dir=args.out, region=regions, seed=args.seed,
                             steps=args.steps, guidance_scale=args.guidance, device=args.device,
                             progress=not args.quiet)
    for name, numbers in result.summary["images"].items():
        print(f"{name}: grid {numbers['grid'][0]}x{numbers['grid'][1]}")
        for region in numbers["regions"]:
            print(f"  {region['label']:>12s} cells {region['cells']}: cosine composed map vs reconstruction "
                  f"{region['cosine_composed']:.3f}")
    for warning in result.warnings:
        print(f"warning: {warning}")

    # 2. The same edit by hand, for the first region of the first pair.
    image_a = open_image(args.image_a if args.image_a.is_file() else featinv.find_images(args.image_a).paths[0])
    image_b = open_image(args.image_b if args.image_b.is_file() else featinv.find_images(args.image_b).paths[0])
    features = model.features([image_a, image_b])                       # [2, C, h, w]
    region = parse_region(regions[0], tuple(model.backbone.info.grid))
    composed = compose_maps(features[:1], features[1:], region)         # A with B's region
    by_hand = model.reconstruct(features=composed, seeds=[args.seed], steps=args.steps,
                                guidance_scale=args.guidance, progress=False)
    target = args.out / "by_hand.png"
    with atomic_write(target) as handle:
        to_pil(by_hand.images[0]).save(handle, format="PNG")
    analysis_image = result.items[0].composites[0]
    difference = float((analysis_image.cpu() - by_hand.images[0].cpu()).abs().max())
    print(f"by hand: {target} (max difference to the analysis' composite: {difference:.2e})")
    return {"result": result, "by_hand": by_hand.images[0], "difference": difference}


if __name__ == "__main__":
    main()
