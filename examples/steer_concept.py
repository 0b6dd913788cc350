"""Concept steering (FeatInv-Viz): see where in an image a model uses each concept.

    python examples/steer_concept.py --run runs/convnext --images bunting/ --out steering/ --n-concepts 3

The concepts come from a fitted decomposer folder (``--concepts DIR``, written by ``featinv concepts fit``)
or are fitted here on ``--fit-images`` (default: the images themselves) and saved to ``OUT/concepts``.
For each image and concept the feature map is split into concept parts plus a residual, the concept's
part is attenuated (to 25% by default, as in the paper), the original and the edited map are
reconstructed with the same seeds, and the median per-pixel RGB distance over the seed pairs,
normalised and thresholded at 0.33, marks where the concept shows in the image. Writes one figure and
one JSON per image plus ``summary.json``.
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
    parser.add_argument("--images", type=Path, required=True, help="image folder or file to visualise")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--concepts", type=Path, default=None, help="fitted concepts folder (`featinv concepts fit`)")
    parser.add_argument("--fit-images", type=Path, default=None,
                        help="images to fit concepts on when --concepts is not given (default: --images)")
    parser.add_argument("--method", default="mcd", help="decomposer to fit: mcd, nmf, sae (or a plugin's)")
    parser.add_argument("--n-concepts", type=int, default=3, help="number of concepts to fit")
    parser.add_argument("--concept", default="all", help="which concepts to steer: all, or indices like 0,2")
    parser.add_argument("--attenuate", type=float, default=0.25, help="factor for the concept's part (paper: 0.25)")
    parser.add_argument("--pairs", type=int, default=5, help="seed pairs per concept (paper: 5)")
    parser.add_argument("--threshold", type=float, default=0.33, help="mask threshold on the normalised difference")
    parser.add_argument("--seed", type=int, default=0, help="first seed; the pairs use seed, seed+1, ...")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the run's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv=None``: sys.argv); tests pass their own list."""
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> Any:
    """Load or fit concepts, run FeatInv-Viz on the images; returns the AnalysisResult."""
    args = parse_args(argv)
    import featinv

    model = featinv.FeatInv.from_pretrained(args.run, device=args.device)
    if args.concepts is not None:
        decomposer = featinv.load_decomposer(args.concepts)
    else:
        # Fit on the run's own backbone and layer, so the concepts live in the space the model inverts.
        decomposer = featinv.fit_concepts(model.backbone, data=args.fit_images or args.images, method=args.method,
                                          n_concepts=args.n_concepts, out=args.out / "concepts",
                                          device=args.device, progress=not args.quiet)
        print(f"fitted {decomposer!r}; saved to {args.out / 'concepts'}")
    concepts = args.concept if args.concept == "all" else [int(c) for c in args.concept.split(",")]
    result = featinv.steer_concepts(model, decomposer, args.images, out_dir=args.out, concepts=concepts,
                                    attenuate=args.attenuate, n=args.pairs, threshold=args.threshold,
                                    seed=args.seed, steps=args.steps, guidance_scale=args.guidance,
                                    device=args.device, progress=not args.quiet)
    for name, numbers in result.summary["images"].items():
        print(f"{name}: top-1 class {numbers['top1_class']}, reconstruction cosine {numbers['reconstruction_cosine']:.3f}")
        for concept in numbers["concepts"]:
            print(f"  concept {concept['concept']}: {concept['energy_share']:.0%} of the feature energy, "
                  f"marks {concept['mask_fraction']:.0%} of the image")
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"figures: {', '.join(str(p) for p in result.figures)}")
    return result


if __name__ == "__main__":
    main()
