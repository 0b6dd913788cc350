"""The demo's stages below the report: its settings, the held-out crops, training, evaluation, and the
two-process helper that runs two of them side by side (:mod:`featinv.apps.demo` strings them together).

Kept apart from the report so that benchmarks and tests can rebuild one stage (the held-out crops, the
demo's backbone, a trained base) without the figure and HTML code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from featinv.errors import FeatinvError
from featinv.io import read_json

BACKBONE = "timm:tf_efficientnet_lite0"
LAYER = "blocks.4"
INPUT_SIZE = 128
RESOLUTION = 32
CROP_SCALE = (0.1, 0.75)  # area fraction of each photo a crop covers (about 30-85 % of the short side)
GUIDED = "unpooled+guidance"  # the variant name of the guided evaluation


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


def _held_out_crops(photos: list[tuple[str, Image.Image]], n: int, seed: int) -> list[tuple[str, Image.Image]]:
    """Crops from a random stream the training never draws from (a different seed), at the base resolution:
    the demo's images are 32 px throughout, and the backbone sees them resized to its input like it sees
    the reconstructions."""
    from featinv.training.data import make_crops

    crops = make_crops([img for _, img in photos], n, RESOLUTION, seed=10_000 + seed, scale=CROP_SCALE)
    return [(f"heldout/{i:02d}-{photos[i % len(photos)][0]}", crop) for i, crop in enumerate(crops)]


def _photo_named(crop: tuple[str, Image.Image]) -> tuple[str, Image.Image]:
    """A held-out crop named after the photograph it was cut from (``heldout/00-skimage.astronaut`` ->
    ``skimage.astronaut``), so the analyses' figures and files say which photographs they show."""
    name, image = crop
    return name.split("-", 1)[1] if name.startswith("heldout/") else name, image


def _complete(run_dir: Path) -> bool:
    """Whether a training folder finished (then the demo reuses it instead of training again)."""
    state = run_dir / "train_state.json"
    return state.is_file() and read_json(state, what="training state").get("status") == "complete"


def _train_base(out: Path, photos: list[Image.Image], s: DemoSettings, quiet: bool) -> Path:
    """Stage 3: the pixel-space base, trained once (a finished folder is reused, an interrupted one resumed)."""
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
    """Stage 4: one FeatInv model (unpooled or pooled), trained once like the base."""
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
    """The side process's entry point: one torch thread, so its numbers match a single-threaded run."""
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

