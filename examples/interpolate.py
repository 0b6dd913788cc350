"""Interpolate between two images' feature maps and reconstruct the mixtures (paper Figure 5).

    python examples/interpolate.py --run runs/convnext --image-a cat.jpg --image-b dog.jpg --out interp/

For each weight ``w`` the map ``w * f(A) + (1 - w) * f(B)`` is reconstructed with one shared seed. The
cosine similarity between each mixture and its reconstruction's features shows where the
reconstruction stops following the map: usually around 50/50, because an average of two feature maps
need not be a feature map any image produces. Writes a figure, a JSON per pair and ``summary.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    """The script's options (the docs tests check every option the docs mention against it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="FeatInv run folder (written by `featinv train`)")
    parser.add_argument("--image-a", type=Path, required=True, help="image (or folder of images) A")
    parser.add_argument("--image-b", type=Path, required=True, help="image B (one for all A, or a folder, one per A)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--weights", default="1,0.75,0.6,0.5,0.4,0.25,0",
                        help="comma-separated shares of image A, each in [0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="the one seed used for every weight")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the run's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv=None``: sys.argv); tests pass their own list."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    """Run the interpolation analysis and print its cosines; returns the AnalysisResult."""
    args = parse_args(argv)
    import featinv

    result = featinv.interpolate(args.run, args.image_a, args.image_b, out_dir=args.out, weights=args.weights,
                                 seed=args.seed, steps=args.steps, guidance_scale=args.guidance,
                                 device=args.device, progress=not args.quiet)
    for name, numbers in result.summary["images"].items():
        print(f"{name}:")
        for step in numbers["steps"]:
            print(f"  {step['weight_a']:.2f} A + {1 - step['weight_a']:.2f} B: cosine to the mixture "
                  f"{step['cosine_weighted']:.3f} (to A {step['cosine_a']:.3f}, to B {step['cosine_b']:.3f})")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"figures: {', '.join(str(p) for p in result.figures)}")
    return result


if __name__ == "__main__":
    main()
