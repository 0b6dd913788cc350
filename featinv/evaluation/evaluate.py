"""Evaluate a FeatInv run on an image set: the paper's Table 1 / Table 2 numbers (sweep and baseline live beside it).

``evaluate`` reconstructs N images per class (class = immediate subfolder), scores each
reconstruction against its original (cosine median on the *unpooled* map even for pooled runs,
top-5 / top-1 match, optionally under other backbones), then FID/KID over the set. With an output
folder every finished batch is recorded in an index (rewritten atomically), so an interrupted
evaluation resumes without redoing images; work can be split over processes (Accelerate /
torchrun set ``RANK``/``WORLD_SIZE``; each process takes its :func:`~featinv.evaluation.sources.shard`).

(Over 400 lines: ``evaluate`` and the named steps it alone uses: arguments, index, sharding, per batch,
per row, summary. Split elsewhere, they would be one job spread over several modules.)
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from featinv.errors import FeatinvError
from featinv.evaluation.sources import DataArg, SourceImage, chunks, collect_sources, process_group, shard
from featinv.evaluation.tables import cross_markdown, summary_markdown
from featinv.io import ensure_output_dir, locks_output, read_json, write_json, write_text
from featinv.outputs import ResumableIndex, save_png

__all__ = ["EvalResult", "evaluate", "load_backbones"]

SUBSTITUTE_SPEC = "timm:tf_efficientnet_lite0"  # offline pretrained backbone for the labelled FID substitute
#: why an evaluation of an encoder without a classifier head has no top-k columns
NO_CLASSIFIER_NOTE = "top-5/top-1 match left out: the backbone has no classifier head (no class logits)"


@dataclass
class EvalResult:
    """Per-image rows and the summary numbers of one evaluation (what metrics.json holds)."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    out: Path | None = None
    images: list[Image.Image] | None = None  # reconstructions in row order, when kept in memory

    @property
    def cos_mean(self) -> float:
        return self.summary["cosine_sim"]["mean"]

    @property
    def cos_ci(self) -> tuple[float | None, float | None]:
        low, high = self.summary["cosine_sim"]["ci95"]
        return low, high

    @property
    def top5(self) -> float | None:
        """None for a backbone without a classifier (see ``summary["topk_note"]``)."""
        return self.summary.get("top5")

    @property
    def top1(self) -> float | None:
        """None for a backbone without a classifier (see ``summary["topk_note"]``)."""
        return self.summary.get("top1")

    @property
    def fid(self) -> float | None:
        return (self.summary.get("fid") or {}).get("value")

    @property
    def fid_label(self) -> str | None:
        return (self.summary.get("fid") or {}).get("label")

    @property
    def kid(self) -> float | None:
        return (self.summary.get("kid") or {}).get("mean")

    @property
    def kid_label(self) -> str | None:
        return (self.summary.get("kid") or {}).get("label")

    def markdown(self) -> str:
        """The summary as a Markdown table (the paper's Table 1 layout)."""
        return summary_markdown([self.summary])


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


def _safe_name(name: str, seed: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).with_suffix("").as_posix().replace("/", "__"))[-60:]
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{stem}-{digest}_s{seed}.png"


def square(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop: originals at the reconstructions' size for FID."""
    from featinv.data import center_crop_box, to_tensor01

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    return to_tensor01(img.crop(center_crop_box(img.width, img.height)))  # the shorter side is ``size``


def _embed(space: Any, images: Iterable[Image.Image], resolution: int, chunk: int = 64) -> torch.Tensor:
    """FID/KID vectors for a stream of images, ``chunk`` at a time (10k images never sit in memory)."""
    out: list[torch.Tensor] = []
    buffer: list[torch.Tensor] = []
    for img in images:
        buffer.append(square(img, resolution))
        if len(buffer) == chunk:
            out.append(space(torch.stack(buffer)))
            buffer = []
    if buffer:
        out.append(space(torch.stack(buffer)))
    return torch.cat(out)


def load_backbones(specs: Sequence[str], weights: Sequence[str] | None, device: str) -> dict[str, Any]:
    """The backbones that judge reconstructions (``--evaluate-with``): one weight option each, or one for all;
    each a spec, ``spec@SIZE`` or a preset name (:mod:`featinv.evaluation.judges`)."""
    from featinv.evaluation.judges import load_judge

    weights = list(weights or [])
    if weights and len(weights) not in (1, len(specs)):
        raise FeatinvError(
            f"{len(weights)} weight options for {len(specs)} --evaluate-with backbones; give one for each or one for all"
        )
    out: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        w = weights[i] if len(weights) == len(specs) else (weights[0] if weights else "pretrained")
        out[spec] = load_judge(spec, w, device)
        out[spec].require_classifier("top-5/top-1 match")  # judging backbones score by class
    return out


def _feature_space(choice: str, model_backbone: Any, device: str) -> Any:
    from featinv.evaluation import fid as fid_metrics

    if choice == "auto" and fid_metrics.find_inception_weights() is None:
        try:
            from featinv.features.backbone import backbone as make_backbone

            substitute = make_backbone(SUBSTITUTE_SPEC, device=device)
        except (FeatinvError, ImportError, OSError):
            substitute = model_backbone
        return fid_metrics.backbone_feature_space(substitute)
    return fid_metrics.resolve_feature_space(choice, backbone=model_backbone, device=device)


def _model_label(model: Any, run: Any) -> str:
    kind = "pooled" if getattr(model, "pooled", False) else "unpooled"
    return f"{model.backbone.spec} ({kind})"


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


@locks_output("out")
def evaluate(
    run: Any,
    data: DataArg,
    out: str | os.PathLike[str] | None = None,
    per_class: int | None = 10,
    seeds: Sequence[int] = (0,),
    guidance_scale: float | None = None,
    steps: int = 50,
    scheduler: str = "ddim",
    batch_size: int = 8,
    evaluate_with: Sequence[str] = (),
    evaluate_weights: Sequence[str] | None = None,
    fid: str = "auto",
    kid_subset_size: int = 1000,
    limit: int | None = None,
    overwrite: bool = False,
    keep_images: bool | None = None,
    device: str = "cpu",
    progress: bool = True,
    name: str | None = None,
    feature_guidance: Any = 0.0,
    unguided_summary: dict[str, Any] | None = None,
    resize_mode: str = "model", control_strength: float = 1.0, guess_mode: bool = False,
) -> EvalResult:
    """Reconstruct ``per_class`` originals per class for each seed and score them (paper Table 1/2).

    ``run``: a run folder or a loaded FeatInv. ``data``: an image folder (any folder, ImageNet
    layout or not) or ``(name, PIL image)`` pairs. ``out``: where images, ``index.json``,
    ``metrics.json/.csv`` and ``metrics.md`` go (None: keep everything in memory, no resume).
    ``fid``: ``auto`` (Inception if its weights are installed, else a labelled backbone substitute),
    ``inception``, a weight file, ``backbone``, ``backbone:SPEC`` or ``none``. ``limit`` caps the
    reconstructions made by this call (the rest are left for a later, resuming call). ``feature_guidance``
    (a strength or a :class:`~featinv.diffusion.guidance.FeatureGuidance`; 0 = the paper's sampler) steers
    sampling toward the target maps; every row also carries pixel MSE, SSIM and high-frequency energy against
    its original, the checks guidance cannot game (:mod:`featinv.evaluation.pixel_checks`). With
    ``unguided_summary`` (the paper sampler's evaluation of the same images and seeds) a guided summary
    carries a ``guidance_warning`` when the cosine rose while the pixel error went up (more: :func:`_paper_settings`).
    """
    from featinv.diffusion.model import load_model

    seeds = [int(s) for s in seeds] or [0]
    guidance_scale, steering, paper = _checked_sampling(guidance_scale, batch_size, feature_guidance, resize_mode,
                                                        control_strength, guess_mode)
    sources = collect_sources(data, per_class)
    rank, world, barrier = process_group(device)
    if world > 1 and device == "cuda":  # one GPU per process under accelerate launch / torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    model = load_model(run, device)
    guidance = float(guidance_scale if guidance_scale is not None else model.guidance_scale)
    settings = {**_run_settings(run, data, model, guidance, steps, scheduler, seeds, per_class, evaluate_with,
                                steering), **paper}
    jobs = [(src, seed) for src in sources for seed in seeds]

    out_dir = ensure_output_dir(out) if out is not None else None
    keep = keep_images if keep_images is not None else out_dir is None
    index, done = _open_index(out_dir, settings, rank, world, overwrite)

    extra = load_backbones(evaluate_with, evaluate_weights, device) if evaluate_with else {}
    # resolved before any reconstruction so a missing weight file fails fast, not after hours of sampling
    space = _feature_space(fid, model.backbone, device) if rank == 0 and fid != "none" else None
    pending, my_rows = _my_share(jobs, rank, world, done, limit)
    kept: dict[str, Image.Image] = {}
    sampling = dict(guidance_scale=guidance, steps=steps, scheduler=scheduler, batch_size=batch_size,
                    feature_guidance=steering, **_control_kwargs(paper))
    unreadable = _reconstruct_pending(model, pending, extra, sampling, my_rows, out_dir, kept if keep else None,
                                      index, progress, resize_mode)
    barrier()
    if rank != 0:
        return EvalResult(summary={}, rows=list(my_rows.values()), out=out_dir)

    rows = _rows_in_job_order(out_dir, settings, my_rows, jobs)
    images = _row_images(rows, kept, out_dir) if keep else None
    summary = _summary(rows, settings, name or _model_label(model, run), jobs, len(sources), unreadable, unguided_summary)
    if space is not None:
        _add_distribution_scores(summary, space, sources, rows, images, out_dir,
                                 int(getattr(model.base, "resolution", 256)), kid_subset_size)
    result = EvalResult(summary=summary, rows=rows, out=out_dir, images=images)
    if out_dir is not None:
        _write_outputs(out_dir, result)
    return result


def _checked_sampling(guidance_scale: float | None, batch_size: int, feature_guidance: Any = 0.0,
                      resize_mode: str = "model", control_strength: float = 1.0,
                      guess_mode: bool = False) -> tuple[float | None, Any, dict[str, Any]]:
    """Fail on a bad guidance scale, batch size, feature guidance, resize mode or control strength before any
    model is loaded; the guidance scale, the ``FeatureGuidance`` and the :func:`_paper_settings`."""
    from featinv.diffusion.guidance import FeatureGuidance

    steering = FeatureGuidance.of(feature_guidance)
    if guidance_scale is not None:
        from featinv.validation import check_guidance

        guidance_scale = check_guidance(guidance_scale)
    if batch_size < 1:
        raise FeatinvError(f"batch size must be at least 1, got {batch_size}")
    return guidance_scale, steering, _paper_settings(resize_mode, control_strength, guess_mode)


def _open_index(out_dir: Path | None, settings: dict[str, Any], rank: int, world: int,
                overwrite: bool) -> tuple[ResumableIndex | None, dict[str, dict[str, Any]]]:
    """This process's index (none without a folder) and the rows already finished by any process."""
    if out_dir is None:
        return None, {}
    index = _index(out_dir / ("index.json" if world == 1 else f"index-rank{rank}-of-{world}.json"), settings)
    done = _read_indexes(out_dir, settings, overwrite)
    ensure_output_dir(out_dir / "images")
    return index, done


def _my_share(jobs: list[tuple[SourceImage, int]], rank: int, world: int, done: dict[str, dict[str, Any]],
              limit: int | None) -> tuple[list[tuple[SourceImage, int]], dict[str, dict[str, Any]]]:
    """This process's shard of the jobs: those still to do (at most ``limit``) and the rows it already has."""
    mine = shard(jobs, rank, world)
    pending = [job for job in mine if f"{job[0].name}#s{job[1]}" not in done]
    if limit is not None:
        pending = pending[: max(0, limit)]
    my_rows = {k: v for k, v in done.items() if k in {f"{s.name}#s{seed}" for s, seed in mine}}
    return pending, my_rows


def _run_settings(run: Any, data: DataArg, model: Any, guidance: float, steps: int, scheduler: str,
                  seeds: list[int], per_class: int | None, evaluate_with: Sequence[str], steering: Any) -> dict[str, Any]:
    """What the index records about the evaluation: a resumed call reuses rows only when these match."""
    backbone = model.backbone
    return {
        "run": os.path.abspath(run) if isinstance(run, (str, os.PathLike)) else None,
        "data": os.path.abspath(data) if isinstance(data, (str, os.PathLike)) else "<in-memory images>",
        "backbone": backbone.spec, "layer": getattr(backbone, "layer", None),
        "pooled": bool(getattr(model, "pooled", False)), "guidance_scale": guidance, "steps": int(steps),
        "scheduler": scheduler, "seeds": seeds, "per_class": per_class, "evaluate_with": list(evaluate_with),
        # null when off; an older index without the key counts as off (see _read_indexes)
        "feature_guidance": steering.describe() if steering.active else None,
    }


def _reconstruct_pending(model: Any, pending: list[tuple[SourceImage, int]], extra: dict[str, Any],
                         sampling: dict[str, Any], my_rows: dict[str, dict[str, Any]], out_dir: Path | None,
                         kept: dict[str, Image.Image] | None, index: ResumableIndex | None,
                         progress: bool, resize_mode: str = "model") -> dict[str, str]:
    """Reconstruct and score the pending (source, seed) jobs batch by batch into ``my_rows`` (reconstructions
    resized to each judge by ``resize_mode``), saving the index after every batch so an interrupted evaluation
    resumes there. Returns the unreadable sources and why:
    they are skipped and counted, like in training and concept fitting (none readable at all is an error)."""
    from featinv.progress import progress as progress_bar

    unreadable: dict[str, str] = {}
    for batch in progress_bar(list(chunks(pending, sampling["batch_size"])), description="reconstructing",
                              enabled=progress):
        pils, readable = [], []
        for src, seed in batch:
            try:
                pils.append(src.image())
                readable.append((src, seed))
            except FeatinvError as exc:
                unreadable[src.name] = str(exc)
        if readable:
            rows = _reconstruct_batch(model, pils, readable, extra, dict(sampling), resize_mode)
            for (src, seed), (row, img) in zip(readable, rows, strict=True):
                my_rows[row["key"]] = _record(row, src, seed, img, out_dir, kept)
            if index is not None:
                index.save(my_rows.values())
    if unreadable and not my_rows:
        raise FeatinvError(f"none of the {len(unreadable)} images could be read ({next(iter(unreadable.values()))}); "
                           "pass a folder of readable images")
    return unreadable


def _rows_in_job_order(out_dir: Path | None, settings: dict[str, Any], my_rows: dict[str, dict[str, Any]],
                       jobs: list[tuple[SourceImage, int]]) -> list[dict[str, Any]]:
    """Every process's rows (read back from the indexes when there is a folder), in the order of the jobs."""
    all_rows = _read_indexes(out_dir, settings, False) if out_dir is not None else my_rows
    order = {f"{s.name}#s{seed}": i for i, (s, seed) in enumerate(jobs)}
    return sorted((r for k, r in all_rows.items() if k in order), key=lambda r: order[r["key"]])


def _row_images(rows: list[dict[str, Any]], kept: dict[str, Image.Image], out_dir: Path | None) -> list[Image.Image]:
    """The reconstruction of each row: from memory when this process made it, else from its PNG."""
    return [kept[r["key"]] if r["key"] in kept else Image.open(out_dir / r["file"]).convert("RGB")  # type: ignore[operator]
            for r in rows]


def _summary(rows: list[dict[str, Any]], settings: dict[str, Any], label: str, jobs: list[tuple[SourceImage, int]],
             n_sources: int, unreadable: dict[str, str], unguided_summary: dict[str, Any] | None) -> dict[str, Any]:
    """The summary of ``rows``, noting the sources that were skipped, and a guided run whose cosine rose while
    its pixels got worse."""
    from featinv.evaluation.pixel_checks import guidance_warning

    expected = sum(1 for src, _ in jobs if src.name not in unreadable)
    summary = _summarise(rows, settings, label, complete=len(rows) == expected, n_sources=n_sources)
    if unreadable:
        summary["skipped_unreadable"] = sorted(unreadable)
    warning = guidance_warning(summary, unguided_summary)
    if warning:
        summary["guidance_warning"] = warning
    return summary


def _paper_settings(resize_mode: str, control_strength: float, guess_mode: bool) -> dict[str, Any]:
    """The settings of the paper's evaluation choices, only where they differ from the defaults (so an
    evaluation folder written before they existed still resumes). ``resize_mode``: how reconstructions are
    resized to each backbone's input, ``bilinear`` (the paper), ``bicubic`` or ``model`` (each model's own);
    ``control_strength`` / ``guess_mode``: the authors' sampler controls (1.0 / off = the paper's sampler)."""
    from featinv.diffusion.controlnet import ControlScales

    if resize_mode not in ("model", "bilinear", "bicubic"):
        raise FeatinvError(f"resize mode {resize_mode!r} unknown; use bilinear (the paper), bicubic or model")
    control = ControlScales(control_strength, bool(guess_mode))
    return {**({"resize_mode": resize_mode} if resize_mode != "model" else {}),
            **({} if control.is_default else control.describe())}


def _control_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """``model.reconstruct`` keywords of the sampler controls recorded in ``settings`` (none at the defaults)."""
    return {key: settings[key] for key in ("control_strength", "guess_mode") if key in settings}


def _update_model_card(run: Any, out_dir: Path) -> None:
    """Rewrite the run folder's model card with this evaluation's metrics, when the evaluation lives in it."""
    if not isinstance(run, (str, os.PathLike)):
        return
    run_dir = Path(run).resolve()
    if (run_dir / "config.json").is_file() and run_dir in out_dir.resolve().parents:
        from featinv.report.card import write_model_card

        write_model_card(run_dir)


def _record(row: dict[str, Any], src: SourceImage, seed: int, img: Image.Image, out_dir: Path | None,
            kept: dict[str, Image.Image] | None) -> dict[str, Any]:
    """Name one scored reconstruction and store it: a PNG in ``out_dir`` and/or the in-memory ``kept``."""
    key = f"{src.name}#s{seed}"
    row.update({"key": key, "source": src.name, "class": src.label, "seed": seed})
    if out_dir is not None:
        row["file"] = f"images/{_safe_name(src.name, seed)}"
        save_png(img, out_dir / row["file"])
    if kept is not None:
        kept[key] = img
    return row


def _add_distribution_scores(summary: dict[str, Any], space: Any, sources: Sequence[SourceImage],
                             rows: list[dict[str, Any]], images: list[Image.Image] | None, out_dir: Path | None,
                             resolution: int, kid_subset_size: int) -> None:
    """FID/KID into the summary, or a note why not (they need two reconstructions at least)."""
    if len(rows) < 2:
        summary["fid_note"] = "FID/KID need at least 2 reconstructions"
        return
    generated = iter(images) if images is not None else (
        Image.open(out_dir / r["file"]).convert("RGB") for r in rows)  # type: ignore[operator]
    summary.update(_distribution_scores(space, sources, rows, generated, resolution, kid_subset_size))


def _distribution_scores(space: Any, sources: Sequence[SourceImage], rows: list[dict[str, Any]],
                         generated: Iterable[Image.Image], resolution: int, kid_subset_size: int) -> dict[str, Any]:
    """FID and KID between the originals of ``rows`` and the reconstructions, in ``space``."""
    from featinv.evaluation import fid as fid_metrics

    by_name = {s.name: s for s in sources}
    done_sources = list(dict.fromkeys(r["source"] for r in rows))
    fa = _embed(space, (by_name[n].image() for n in done_sources), resolution)
    fb = _embed(space, generated, resolution)
    fid = {"label": space.fid_label, "value": _finite(fid_metrics.frechet_distance(fa, fb)), "space": space.name,
           "n_real": len(fa), "n_generated": len(fb)}
    kid_mean, kid_std = fid_metrics.kernel_distance(fa, fb, subset_size=kid_subset_size, n_subsets=100)
    return {"fid": fid, "kid": {"label": space.kid_label, "mean": kid_mean, "std": kid_std, "space": space.name}}


def _reconstruct_batch(
    model: Any,
    pils: list[Image.Image],
    batch: Sequence[tuple[SourceImage, int]],
    extra: dict[str, Any],
    sampling: dict[str, Any],
    resize_mode: str = "model",
) -> list[tuple[dict[str, Any], Image.Image]]:
    """Reconstruct one batch (``sampling``: keyword arguments of ``model.reconstruct``) and score every
    sample against its original: in the backbone's eyes (reconstructions resized by ``resize_mode``), and
    in pixels."""
    from featinv.data import to_pil
    from featinv.evaluation import metrics
    from featinv.evaluation.cosine import encode_positions
    from featinv.features.backbone import pool_features
    from featinv.features.similarity import cosine_positions

    backbone = model.backbone
    with torch.no_grad():
        x = backbone.preprocess(pils)
        f_orig, logits_orig = backbone.features_and_logits(x)
        cond = pool_features(f_orig) if getattr(model, "pooled", False) else f_orig
        rec = model.reconstruct(features=cond, seeds=[seed for _, seed in batch], progress=False, **sampling)
        rec_images = rec.images.float().clamp(0, 1)
        pixels = _pixel_checks(pils, rec_images.cpu())
        f_rec, logits_rec = backbone.features_and_logits(backbone.normalize(rec_images.to(backbone.device),
                                                                            resize=resize_mode))
        positions = cosine_positions(f_orig.cpu(), f_rec.cpu())
        cos = metrics.cosine_median(f_orig.cpu(), f_rec.cpu())
        classes = _class_matches(logits_orig, logits_rec)
        cross: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for spec, other in extra.items():
            lo = other.logits(other.preprocess(pils)).cpu()
            lr = other.logits(other.normalize(rec_images.to(other.device), resize=resize_mode)).cpu()
            cross[spec] = (metrics.topk_match(lo, lr, 1), metrics.topk_match(lo, lr, 5))
    out = []
    for i in range(len(batch)):
        row: dict[str, Any] = {
            "cosine": float(cos[i]),
            "cosine_positions": encode_positions(positions[i]),
            **{k: v[i] for k, v in classes.items()},  # nothing when the backbone has no classifier
            **{k: v[i] for k, v in pixels.items()},
        }
        if getattr(rec, "fidelity", None) is not None:
            row["fidelity"] = float(rec.fidelity[i])
        if cross:
            row["cross"] = {spec: {"top1": bool(t1[i]), "top5": bool(t5[i])} for spec, (t1, t5) in cross.items()}
        out.append((row, to_pil(rec_images[i])))
    return out


def _class_matches(logits_orig: torch.Tensor | None, logits_rec: torch.Tensor | None) -> dict[str, list[Any]]:
    """Per image: top-1/top-5 match and both predictions; empty for a backbone without a classifier."""
    from featinv.evaluation import metrics

    if logits_orig is None or logits_rec is None:
        return {}
    lo, lr = logits_orig.cpu(), logits_rec.cpu()
    return {"top1": [bool(v) for v in metrics.topk_match(lo, lr, 1)],
            "top5": [bool(v) for v in metrics.topk_match(lo, lr, 5)],
            "pred_original": [int(v) for v in lo.argmax(-1)], "pred_reconstruction": [int(v) for v in lr.argmax(-1)]}


def _pixel_checks(pils: list[Image.Image], rec_images: torch.Tensor) -> dict[str, list[Any]]:
    """Per image: pixel MSE, SSIM (None without scikit-image) and high-frequency energy of the reconstruction
    and of its original, the original resized and centre-cropped to the reconstruction's size."""
    from featinv.evaluation import pixel_checks

    originals = torch.stack([square(img, rec_images.shape[-1]) for img in pils]).float()
    n = len(pils)
    ssims = pixel_checks.ssim(rec_images, originals).tolist() if pixel_checks.ssim_available() else [None] * n
    return {"pixel_mse": pixel_checks.pixel_mse(rec_images, originals).tolist(), "ssim": ssims,
            "high_freq": pixel_checks.high_frequency(rec_images).tolist(),
            "high_freq_original": pixel_checks.high_frequency(originals).tolist()}


def _index(path: Path, settings: dict[str, Any]) -> ResumableIndex:
    """One rank's index file; the judging backbones may change between runs (rows are checked instead)."""
    return ResumableIndex(path, settings, what="evaluation index", ignored=("evaluate_with", "feature_guidance"))


def _read_indexes(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, dict[str, Any]]:
    """Rows already finished in ``out_dir`` (all ranks' index files); refuse mixing settings."""

    def refusal(changed: list[str]) -> str:
        return (f"{out_dir} holds an evaluation with other settings ({', '.join(sorted(changed)) or 'version'}); "
                "use another --out folder or pass --overwrite")

    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(out_dir.glob("index*.json")):
        if overwrite:
            read_json(path, what="evaluation index")  # an unreadable index is reported, not silently dropped
            path.unlink()
            continue
        stored = read_json(path, what="evaluation index").get("settings", {})
        if stored.get("feature_guidance") != settings["feature_guidance"]:  # missing (older index) = off
            raise FeatinvError(refusal(["feature_guidance"]))
        for key, row in _index(path, settings).load(refusal).items():
            # a row scored NaN (broken weights, before such outputs were refused) is redone, not averaged in
            if all(spec in row.get("cross", {}) for spec in settings["evaluate_with"]) and _finite(row.get("cosine")) is not None:
                rows[key] = row
    return rows


def _summarise(rows: list[dict[str, Any]], settings: dict[str, Any], label: str, complete: bool, n_sources: int) -> dict[str, Any]:
    from featinv.evaluation.cosine import PER_IMAGE_NOTE, all_positions_summary
    from featinv.evaluation.metrics import mean_ci95, rate_ci95
    from featinv.evaluation.pixel_checks import summarise_pixel_checks

    n = len(rows)
    mean, low, high = mean_ci95([r["cosine"] for r in rows])
    classified = all("top1" in r for r in rows)  # an encoder without a classifier has no top-k rows
    hits = {k: sum(r[k] for r in rows) for k in ("top5", "top1")} if classified else {}
    summary: dict[str, Any] = {
        "model": label,
        **settings,
        "complete": complete,
        "n_sources": n_sources,
        "n_images": n,
        "classes": len({r["class"] for r in rows}),
        "cosine_sim": {"mean": _finite(mean), "ci95": [_finite(low), _finite(high)], "note": PER_IMAGE_NOTE},
        **{k: hits[k] / n if n else None for k in hits},
        **{f"{k}_ci95": [_finite(v) for v in rate_ci95(hits[k], n)] for k in hits},  # Wilson score interval
    }
    pooled = all_positions_summary(rows)
    if pooled is not None:
        summary["cosine_sim_all_positions"] = pooled
    if not classified:
        summary["topk_note"] = NO_CLASSIFIER_NOTE
    checks = summarise_pixel_checks(rows)
    if checks:
        summary["pixel_checks"] = checks
    if settings["evaluate_with"]:
        summary["cross_model"] = {
            spec: {"top5": sum(r["cross"][spec]["top5"] for r in rows) / n if n else None,
                   "top1": sum(r["cross"][spec]["top1"] for r in rows) / n if n else None}
            for spec in settings["evaluate_with"]
        }
    return summary


def _write_outputs(out_dir: Path, result: EvalResult) -> None:
    rows = [{k: v for k, v in row.items() if k != "cosine_positions"} for row in result.rows]  # kept in the index
    write_json(out_dir / "metrics.json", {"summary": result.summary, "rows": rows})
    columns = ["key", "source", "class", "seed", "file", "cosine", "top5", "top1", "pred_original", "pred_reconstruction",
               "fidelity", "pixel_mse", "ssim", "high_freq", "high_freq_original"]
    specs = list(result.summary.get("cross_model", {}))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns + [f"{spec} top{k}" for spec in specs for k in (5, 1)])
    for row in result.rows:
        cross = row.get("cross", {})
        writer.writerow([row.get(c, "") for c in columns] + [cross[s][f"top{k}"] for s in specs for k in (5, 1)])
    write_text(out_dir / "metrics.csv", text.getvalue())
    write_text(out_dir / "metrics.md", summary_markdown([result.summary]) + cross_markdown([result.summary]))
    _update_model_card(result.summary.get("run"), out_dir)

