"""Evaluate a FeatInv run on an image set: the paper's Table 1 / Table 2 / Figure 7 / Table 3.

``evaluate`` reconstructs N images per class (class = immediate subfolder), scores each
reconstruction against its original (cosine median on the *unpooled* map even for pooled runs,
top-5 / top-1 match, optionally under other backbones), then FID/KID over the set. With an output
folder every finished batch is recorded in an index (rewritten atomically), so an interrupted
evaluation resumes without redoing images; work can be split over processes (Accelerate /
torchrun set ``RANK``/``WORLD_SIZE``; each process takes its :func:`shard`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from featinv.errors import FeatinvError
from featinv.io import atomic_write, ensure_output_dir, read_json, save_figure, write_json, write_text

__all__ = [
    "EvalResult",
    "SourceImage",
    "SweepResult",
    "collect_sources",
    "compare",
    "evaluate",
    "load_summary",
    "markdown_table",
    "rich_table",
    "shard",
    "sweep",
]

T = TypeVar("T")
INDEX_VERSION = 1
SUBSTITUTE_SPEC = "timm:tf_efficientnet_lite0"  # offline pretrained backbone for the labelled FID substitute
DataArg = str | os.PathLike[str] | Sequence[tuple[str, Image.Image]]


# ---------------------------------------------------------------------------------------------
# Sources and sharding
# ---------------------------------------------------------------------------------------------


@dataclass
class SourceImage:
    """One original image: a unique name, its class (immediate subfolder) and how to open it."""

    name: str
    label: str
    opener: Callable[[], Image.Image]

    def image(self) -> Image.Image:
        """Open the image now (sources are listed without decoding them all up front)."""
        return self.opener()


def collect_sources(data: DataArg, per_class: int | None = None) -> list[SourceImage]:
    """Originals from a folder (first ``per_class`` per immediate subfolder, sorted) or from
    in-memory ``(name, PIL image)`` pairs (a name ``cls/x`` puts the image in class ``cls``)."""
    if per_class is not None and per_class < 1:
        raise FeatinvError(f"per_class must be at least 1, got {per_class}; use e.g. --per-class 10")
    groups: dict[str, list[SourceImage]] = {}
    if isinstance(data, (str, os.PathLike)):
        from featinv.data import find_images, open_image

        listing = find_images(data)
        for label, paths in listing.classes().items():
            for path in paths:
                name = path.relative_to(listing.root).as_posix() if path != listing.root else path.name
                groups.setdefault(label, []).append(SourceImage(name, label, lambda p=path: open_image(p)))
    else:
        seen: set[str] = set()
        for entry in data:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Image.Image)):
                raise FeatinvError("data items must be (name, PIL.Image) pairs; pass a folder path or such pairs")
            name, img = str(entry[0]), entry[1]
            if name in seen:
                raise FeatinvError(f"image name {name!r} occurs twice; give every in-memory image a unique name")
            seen.add(name)
            label = name.split("/")[0] if "/" in name else "images"
            rgb = img.convert("RGB")
            groups.setdefault(label, []).append(SourceImage(name, label, lambda im=rgb: im))
        if not groups:
            raise FeatinvError("no images given; pass a non-empty folder or list of (name, image) pairs")
    sources: list[SourceImage] = []
    for label in sorted(groups):
        chosen = sorted(groups[label], key=lambda s: s.name)
        sources.extend(chosen if per_class is None else chosen[:per_class])
    return sources


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Process ``rank`` of ``world_size`` takes every ``world_size``-th item (disjoint, covers all)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise FeatinvError(f"rank {rank} / world size {world_size} is invalid; need 0 <= rank < world size")
    return list(items[rank::world_size])


def _process_group() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier): Accelerate's state when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state.wait_for_everyone


# ---------------------------------------------------------------------------------------------
# Result objects
# ---------------------------------------------------------------------------------------------


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
    def top5(self) -> float:
        return self.summary["top5"]

    @property
    def top1(self) -> float:
        return self.summary["top1"]

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
        return markdown_table([self.summary])


@dataclass
class SweepResult:
    """FID (or its labelled substitute) and cosine distance per guidance scale (paper Figure 7)."""

    guidance: list[float]
    results: list[EvalResult]
    plot: Path | None = None
    numbers: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


def _safe_name(name: str, seed: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).with_suffix("").as_posix().replace("/", "__"))[-60:]
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{stem}-{digest}_s{seed}.png"


def _save_png(img: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def _square(img: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop: originals at the reconstructions' size for FID."""
    from featinv.data import to_tensor01

    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return to_tensor01(img.crop((left, top, left + size, top + size)))


def _embed(space: Any, images: Iterable[Image.Image], resolution: int, chunk: int = 64) -> torch.Tensor:
    """FID/KID vectors for a stream of images, ``chunk`` at a time (10k images never sit in memory)."""
    out: list[torch.Tensor] = []
    buffer: list[torch.Tensor] = []
    for img in images:
        buffer.append(_square(img, resolution))
        if len(buffer) == chunk:
            out.append(space(torch.stack(buffer)))
            buffer = []
    if buffer:
        out.append(space(torch.stack(buffer)))
    return torch.cat(out)


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _extra_backbones(specs: Sequence[str], weights: Sequence[str] | None, device: str) -> dict[str, Any]:
    from featinv.features.backbone import backbone as make_backbone

    weights = list(weights or [])
    if weights and len(weights) not in (1, len(specs)):
        raise FeatinvError(
            f"{len(weights)} weight options for {len(specs)} --evaluate-with backbones; give one for each or one for all"
        )
    out: dict[str, Any] = {}
    for i, spec in enumerate(specs):
        w = weights[i] if len(weights) == len(specs) else (weights[0] if weights else "pretrained")
        out[spec] = make_backbone(spec, weights=w, device=device)
    return out


def _feature_space(choice: str, model_backbone: Any, device: str) -> Any:
    from featinv.evaluation import metrics

    if choice == "auto" and metrics.find_inception_weights() is None:
        try:
            from featinv.features.backbone import backbone as make_backbone

            substitute = make_backbone(SUBSTITUTE_SPEC, device=device)
        except (FeatinvError, ImportError, OSError):
            substitute = model_backbone
        return metrics.backbone_feature_space(substitute)
    return metrics.resolve_feature_space(choice, backbone=model_backbone, device=device)


def _model_label(model: Any, run: Any) -> str:
    kind = "pooled" if getattr(model, "pooled", False) else "unpooled"
    return f"{model.backbone.spec} ({kind})"


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


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
) -> EvalResult:
    """Reconstruct ``per_class`` originals per class for each seed and score them (paper Table 1/2).

    ``run``: a run folder or a loaded FeatInv. ``data``: an image folder (any folder, ImageNet
    layout or not) or ``(name, PIL image)`` pairs. ``out``: where images, ``index.json``,
    ``metrics.json/.csv`` and ``metrics.md`` go (None: keep everything in memory, no resume).
    ``fid``: ``auto`` (Inception if its weights are installed, else a labelled backbone substitute),
    ``inception``, a weight file, ``backbone``, ``backbone:SPEC`` or ``none``. ``limit`` caps the
    reconstructions made by this call (the rest are left for a later, resuming call).
    """
    from featinv.evaluation import metrics
    from featinv.progress import progress as progress_bar

    seeds = [int(s) for s in seeds] or [0]
    if guidance_scale is not None:
        from featinv.validation import check_guidance

        guidance_scale = check_guidance(guidance_scale)
    if batch_size < 1:
        raise FeatinvError(f"batch size must be at least 1, got {batch_size}")
    sources = collect_sources(data, per_class)
    rank, world, barrier = _process_group()
    if world > 1 and device == "cuda":  # one GPU per process under accelerate launch / torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    from featinv.diffusion.model import load_model

    model = load_model(run, device)
    backbone = model.backbone
    guidance = float(guidance_scale if guidance_scale is not None else model.guidance_scale)
    label = name or _model_label(model, run)
    settings = {
        "run": os.path.abspath(run) if isinstance(run, (str, os.PathLike)) else None,
        "data": os.path.abspath(data) if isinstance(data, (str, os.PathLike)) else "<in-memory images>",
        "backbone": backbone.spec,
        "layer": getattr(backbone, "layer", None),
        "pooled": bool(getattr(model, "pooled", False)),
        "guidance_scale": guidance,
        "steps": int(steps),
        "scheduler": scheduler,
        "seeds": seeds,
        "per_class": per_class,
        "evaluate_with": list(evaluate_with),
    }
    jobs = [(src, seed) for src in sources for seed in seeds]

    out_dir = ensure_output_dir(out) if out is not None else None
    keep = keep_images if keep_images is not None else out_dir is None
    done: dict[str, dict[str, Any]] = {}
    index_path: Path | None = None
    if out_dir is not None:
        index_path = out_dir / ("index.json" if world == 1 else f"index-rank{rank}-of-{world}.json")
        done = _read_indexes(out_dir, settings, overwrite)
        ensure_output_dir(out_dir / "images")

    extra = _extra_backbones(evaluate_with, evaluate_weights, device) if evaluate_with else {}
    # resolved before any reconstruction so a missing weight file fails fast, not after hours of sampling
    space = _feature_space(fid, backbone, device) if rank == 0 and fid != "none" else None
    mine = shard(jobs, rank, world)
    pending = [job for job in mine if f"{job[0].name}#s{job[1]}" not in done]
    if limit is not None:
        pending = pending[: max(0, limit)]
    my_rows = {k: v for k, v in done.items() if k in {f"{s.name}#s{seed}" for s, seed in mine}}
    kept: dict[str, Image.Image] = {}

    batches = list(_chunks(pending, batch_size))
    unreadable: dict[str, str] = {}  # corrupt / truncated sources: skipped and counted, like train and concepts
    for batch in progress_bar(batches, description="reconstructing", enabled=progress):
        pils, readable = [], []
        for src, seed in batch:
            try:
                pils.append(src.image())
                readable.append((src, seed))
            except FeatinvError as exc:
                unreadable[src.name] = str(exc)
        if not readable:
            continue
        rows = _reconstruct_batch(model, pils, readable, guidance, steps, scheduler, batch_size, extra)
        for (src, seed), (row, img) in zip(readable, rows, strict=True):
            key = f"{src.name}#s{seed}"
            row.update({"key": key, "source": src.name, "class": src.label, "seed": seed})
            if out_dir is not None:
                row["file"] = f"images/{_safe_name(src.name, seed)}"
                _save_png(img, out_dir / row["file"])
            if keep:
                kept[key] = img
            my_rows[key] = row
        if index_path is not None:
            write_json(index_path, {"version": INDEX_VERSION, "settings": settings, "rows": list(my_rows.values())})
    if unreadable and not my_rows:
        raise FeatinvError(f"none of the {len(unreadable)} images could be read ({next(iter(unreadable.values()))}); "
                           "pass a folder of readable images")
    barrier()
    if rank != 0:
        return EvalResult(summary={}, rows=list(my_rows.values()), out=out_dir)

    all_rows = _read_indexes(out_dir, settings, False) if out_dir is not None else my_rows
    order = {f"{s.name}#s{seed}": i for i, (s, seed) in enumerate(jobs)}
    rows = sorted((r for k, r in all_rows.items() if k in order), key=lambda r: order[r["key"]])
    images = None
    if keep:
        images = [kept[r["key"]] if r["key"] in kept else Image.open(out_dir / r["file"]).convert("RGB")  # type: ignore[operator]
                  for r in rows]

    expected = sum(1 for src, _ in jobs if src.name not in unreadable)
    summary = _summarise(rows, settings, label, complete=len(rows) == expected, n_sources=len(sources))
    if unreadable:
        summary["skipped_unreadable"] = sorted(unreadable)
    if space is not None and len(rows) >= 2:
        resolution = int(getattr(model.base, "resolution", 256))
        by_name = {s.name: s for s in sources}
        done_sources = list(dict.fromkeys(r["source"] for r in rows))
        fa = _embed(space, (by_name[n].image() for n in done_sources), resolution)
        if images is not None:
            fb = _embed(space, iter(images), resolution)
        else:
            fb = _embed(space, (Image.open(out_dir / r["file"]).convert("RGB") for r in rows), resolution)  # type: ignore[operator]
        summary["fid"] = {"label": space.fid_label, "value": _finite(metrics.frechet_distance(fa, fb)),
                          "space": space.name, "n_real": len(fa), "n_generated": len(fb)}
        kid_mean, kid_std = metrics.kernel_distance(fa, fb, subset_size=kid_subset_size, n_subsets=100)
        summary["kid"] = {"label": space.kid_label, "mean": kid_mean, "std": kid_std, "space": space.name}
    elif space is not None:
        summary["fid_note"] = "FID/KID need at least 2 reconstructions"

    result = EvalResult(summary=summary, rows=rows, out=out_dir, images=images)
    if out_dir is not None:
        _write_outputs(out_dir, result)
    return result


def _reconstruct_batch(
    model: Any,
    pils: list[Image.Image],
    batch: Sequence[tuple[SourceImage, int]],
    guidance: float,
    steps: int,
    scheduler: str,
    batch_size: int,
    extra: dict[str, Any],
) -> list[tuple[dict[str, Any], Image.Image]]:
    """Reconstruct one batch and score every sample against its original."""
    from featinv.data import to_pil
    from featinv.evaluation import metrics
    from featinv.features.backbone import pool_features

    backbone = model.backbone
    with torch.no_grad():
        x = backbone.preprocess(pils)
        f_orig, logits_orig = backbone.features_and_logits(x)
        cond = pool_features(f_orig) if getattr(model, "pooled", False) else f_orig
        rec = model.reconstruct(features=cond, seeds=[seed for _, seed in batch], guidance_scale=guidance,
                                steps=steps, scheduler=scheduler, batch_size=batch_size, progress=False)
        rec_images = rec.images.float().clamp(0, 1)
        f_rec, logits_rec = backbone.features_and_logits(backbone.normalize(rec_images.to(backbone.device)))
        cos = metrics.cosine_median(f_orig.cpu(), f_rec.cpu())
        top1 = metrics.topk_match(logits_orig.cpu(), logits_rec.cpu(), 1)
        top5 = metrics.topk_match(logits_orig.cpu(), logits_rec.cpu(), 5)
        cross: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for spec, other in extra.items():
            lo = other.logits(other.preprocess(pils)).cpu()
            lr = other.logits(other.normalize(rec_images.to(other.device))).cpu()
            cross[spec] = (metrics.topk_match(lo, lr, 1), metrics.topk_match(lo, lr, 5))
    out = []
    for i in range(len(batch)):
        row: dict[str, Any] = {
            "cosine": float(cos[i]),
            "top1": bool(top1[i]),
            "top5": bool(top5[i]),
            "pred_original": int(logits_orig[i].argmax()),
            "pred_reconstruction": int(logits_rec[i].argmax()),
        }
        if cross:
            row["cross"] = {spec: {"top1": bool(t1[i]), "top5": bool(t5[i])} for spec, (t1, t5) in cross.items()}
        out.append((row, to_pil(rec_images[i])))
    return out


def _read_indexes(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, dict[str, Any]]:
    """Rows already finished in ``out_dir`` (all ranks' index files); refuse mixing settings."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(out_dir.glob("index*.json")):
        index = read_json(path, what="evaluation index")
        if overwrite:
            path.unlink()
            continue
        theirs = {k: v for k, v in index.get("settings", {}).items() if k not in ("evaluate_with",)}
        ours = {k: v for k, v in settings.items() if k not in ("evaluate_with",)}
        if index.get("version") != INDEX_VERSION or theirs != ours:
            changed = sorted(k for k in ours if theirs.get(k) != ours[k])
            raise FeatinvError(
                f"{out_dir} holds an evaluation with other settings ({', '.join(changed) or 'version'}); "
                "use another --out folder or pass --overwrite"
            )
        for row in index.get("rows", []):
            if all(spec in row.get("cross", {}) for spec in settings["evaluate_with"]):
                rows[row["key"]] = row
    return rows


def _summarise(rows: list[dict[str, Any]], settings: dict[str, Any], label: str, complete: bool, n_sources: int) -> dict[str, Any]:
    from featinv.evaluation.metrics import mean_ci95, rate_ci95

    n = len(rows)
    mean, low, high = mean_ci95([r["cosine"] for r in rows])
    hits = {k: sum(r[k] for r in rows) for k in ("top5", "top1")}
    summary: dict[str, Any] = {
        "model": label,
        **settings,
        "complete": complete,
        "n_sources": n_sources,
        "n_images": n,
        "classes": len({r["class"] for r in rows}),
        "cosine_sim": {"mean": _finite(mean), "ci95": [_finite(low), _finite(high)],
                       "note": "median over feature-map positions per image (unpooled map), mean over images"},
        "top5": hits["top5"] / n if n else None,
        "top1": hits["top1"] / n if n else None,
        **{f"{k}_ci95": [_finite(v) for v in rate_ci95(hits[k], n)] for k in hits},  # Wilson score interval
    }
    if settings["evaluate_with"]:
        summary["cross_model"] = {
            spec: {"top5": sum(r["cross"][spec]["top5"] for r in rows) / n if n else None,
                   "top1": sum(r["cross"][spec]["top1"] for r in rows) / n if n else None}
            for spec in settings["evaluate_with"]
        }
    return summary


def _write_outputs(out_dir: Path, result: EvalResult) -> None:
    write_json(out_dir / "metrics.json", {"summary": result.summary, "rows": result.rows})
    columns = ["key", "source", "class", "seed", "file", "cosine", "top5", "top1", "pred_original", "pred_reconstruction"]
    specs = list(result.summary.get("cross_model", {}))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns + [f"{spec} top{k}" for spec in specs for k in (5, 1)])
    for row in result.rows:
        cross = row.get("cross", {})
        writer.writerow([row.get(c, "") for c in columns] + [cross[s][f"top{k}"] for s in specs for k in (5, 1)])
    write_text(out_dir / "metrics.csv", text.getvalue())
    write_text(out_dir / "metrics.md", markdown_table([result.summary]) + _cross_markdown([result.summary]))


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _fmt_cos(cos: dict[str, Any]) -> str:
    mean, (low, high) = cos.get("mean"), cos.get("ci95", [None, None])
    if mean is None:
        return "n/a"
    if low is None or high is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {(high - low) / 2:.2f}"


def _table_rows(summaries: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    fid_labels = sorted({s["fid"]["label"] for s in summaries if s.get("fid")}) or ["FID"]
    kid_labels = sorted({s["kid"]["label"] for s in summaries if s.get("kid")})
    header = ["Model", "cosine-sim", "top5(1) match", *fid_labels, *kid_labels, "n"]
    labels = [s.get("model", "?") for s in summaries]
    if len(set(labels)) < len(labels):  # e.g. one run at several guidance scales: tell the rows apart
        labels = [f"{lab} g={s.get('guidance_scale', '?'):g} {Path(str(s.get('data', ''))).name}".rstrip()
                  if isinstance(s.get("guidance_scale"), (int, float)) else lab for lab, s in zip(labels, summaries, strict=True)]
    rows = []
    for s, model_label in zip(summaries, labels, strict=True):
        cells = [model_label, _fmt_cos(s.get("cosine_sim", {})), f"{_fmt_pct(s.get('top5'))} ({_fmt_pct(s.get('top1'))})"]
        for lab in fid_labels:
            value = (s.get("fid") or {}).get("value") if (s.get("fid") or {}).get("label") == lab else None
            cells.append("n/a" if value is None else f"{value:.2f}")
        for lab in kid_labels:
            kid = s.get("kid") or {}
            cells.append(f"{kid['mean']:.4f} ± {kid['std']:.4f}" if kid.get("label") == lab else "n/a")
        cells.append(str(s.get("n_images", "")) + ("" if s.get("complete", True) else " (partial)"))
        rows.append(cells)
    return header, rows


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The paper's Table 1 layout (Model | cosine-sim | top5(1) match | FID) as Markdown.

    A substitute FID column is headed with its feature space, e.g. ``FID[timm:... pooled]``.
    """
    header, rows = _table_rows(summaries)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _cross_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    specs = list(dict.fromkeys(spec for s in summaries for spec in s.get("cross_model", {})))
    if not specs:
        return ""
    lines = ["", "Cross-model top5 / top1 match (rows: conditioned on; columns: evaluated by)", "",
             "| conditioned on | " + " | ".join(specs) + " |", "|---" * (len(specs) + 1) + "|"]
    for s in summaries:
        cm = s.get("cross_model", {})
        cells = [f"{_fmt_pct(cm[sp]['top5'])} / {_fmt_pct(cm[sp]['top1'])}" if sp in cm else "n/a" for sp in specs]
        lines.append(f"| {s.get('model', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(summaries: Sequence[dict[str, Any]], title: str = "FeatInv evaluation") -> Any:
    """The Table 1 layout as a rich Table (printed by the CLI)."""
    from rich.markup import escape
    from rich.table import Table

    header, rows = _table_rows(summaries)
    table = Table(title=title)
    for i, col in enumerate(header):  # escape: labels like FID[timm:...] are not rich markup
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(escape(cell) for cell in r))
    return table


def cross_rich_table(summaries: Sequence[dict[str, Any]]) -> Any | None:
    """Table 2 (cross-model top5/top1) as a rich Table, or None when no run has cross-model numbers."""
    from rich.table import Table

    specs = list(dict.fromkeys(spec for s in summaries for spec in s.get("cross_model", {})))
    if not specs:
        return None
    table = Table(title="Cross-model match: top5 / top1 (evaluated by)")
    table.add_column("conditioned on")
    for spec in specs:
        table.add_column(spec, justify="right")
    for s in summaries:
        cm = s.get("cross_model", {})
        table.add_row(s.get("model", "?"), *[f"{_fmt_pct(cm[sp]['top5'])} / {_fmt_pct(cm[sp]['top1'])}" if sp in cm else "n/a"
                                             for sp in specs])
    return table


# ---------------------------------------------------------------------------------------------
# compare / sweep
# ---------------------------------------------------------------------------------------------


def load_summary(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Summaries from an evaluation folder, a metrics.json, or a run folder (all its ``eval/*/``)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif (path / "metrics.json").is_file():
        files = [path / "metrics.json"]
    else:
        files = sorted(path.glob("eval/*/metrics.json")) + sorted(path.glob("*/metrics.json"))
    if not files:
        raise FeatinvError(f"no metrics.json in {path}; run `featinv eval --run RUN --data DIR` first or pass its --out folder")
    summaries = []
    for file in files:
        data = read_json(file, what="metrics file")
        summary = data.get("summary", data) if isinstance(data, dict) else None
        if not isinstance(summary, dict) or "cosine_sim" not in summary:
            raise FeatinvError(f"{file} is not a featinv metrics file; pass an evaluation folder")
        summaries.append(summary)
    return summaries


def compare(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Summaries of several runs / evaluations, in the order given (one table row each)."""
    if not paths:
        raise FeatinvError("nothing to compare; pass one or more run or evaluation folders")
    return [s for p in paths for s in load_summary(p)]


def sweep(
    run: Any,
    data: DataArg,
    guidance: Sequence[float] = (1.0, 1.75, 3.0, 5.0, 8.0),
    out: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> SweepResult:
    """Evaluate at each guidance scale (same originals and seeds) and plot FID and cosine distance
    against it (paper Figure 7); writes ``sweep.json`` and ``sweep.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not guidance:
        raise FeatinvError("no guidance scales given; pass e.g. --guidance 1,1.75,3,5,8")
    from featinv.validation import check_guidance

    guidance = [check_guidance(g, "every guidance scale") for g in guidance]
    out_dir = ensure_output_dir(out) if out is not None else None
    results = []
    for g in guidance:  # a run folder is reloaded per scale (cheap) so every metrics.json names its run
        sub = out_dir / f"guidance-{g:g}" if out_dir is not None else None
        results.append(evaluate(run, data, out=sub, guidance_scale=float(g), **kwargs))
    fid_label = next((r.fid_label for r in results if r.fid_label), None)
    numbers = {
        "model": results[0].summary.get("model"),
        "guidance": [float(g) for g in guidance],
        "fid_label": fid_label,
        "fid": [r.fid for r in results],
        "kid_label": next((r.kid_label for r in results if r.kid_label), None),
        "kid": [r.kid for r in results],
        "cosine_distance": [None if r.cos_mean is None else 1.0 - r.cos_mean for r in results],
        "top5": [r.top5 for r in results],
        "top1": [r.top1 for r in results],
    }
    plot = None
    if out_dir is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = numbers["guidance"]
        if fid_label is not None:
            ax.plot(xs, [math.nan if v is None else v for v in numbers["fid"]], "o-", color="tab:blue", label=fid_label)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(fid_label or "FID (not computed)")
        ax2 = ax.twinx()
        ax2.plot(xs, [math.nan if v is None else v for v in numbers["cosine_distance"]], "s--", color="tab:red",
                 label="cosine distance")
        ax2.set_ylabel("cosine distance (1 - median cosine)")
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="best")
        ax.set_title(f"{numbers['model']}: quality vs guidance")
        plot = save_figure(fig, out_dir / "sweep.png")
        write_json(out_dir / "sweep.json", numbers)
    return SweepResult(guidance=[float(g) for g in guidance], results=results, plot=plot, numbers=numbers)


# ---------------------------------------------------------------------------------------------
# Class-prompt baseline (paper Table 3, "MiniSD top5(1)")
# ---------------------------------------------------------------------------------------------


@dataclass
class BaselineResult:
    """Top-5 / top-1 accuracy of each backbone on images the plain base generates from class prompts."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    out: Path | None = None
    images: list[Image.Image] | None = None


def encode_prompts(base_spec: str, prompts: Sequence[str], device: str = "cpu") -> torch.Tensor:
    """CLIP embeddings ``[N, L, D]`` of arbitrary prompts for an ``sd:`` base.

    The base object keeps only its two fixed prompt embeddings, so the tokenizer and text encoder are
    read again from the same (local or cached) diffusers folder; nothing is downloaded offline.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    from featinv.diffusion.bases import _hub_offline

    source = base_spec.split(":", 1)[1] if base_spec.startswith("sd:") else base_spec
    local = Path(source).expanduser()
    kw = {"local_files_only": local.exists() or _hub_offline()}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(local) if local.exists() else source, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(str(local) if local.exists() else source, subfolder="text_encoder", **kw)
    except Exception as exc:  # transformers raises OSError/ValueError/... for a missing or partial folder
        raise FeatinvError(
            f"cannot load the text encoder of {base_spec} ({type(exc).__name__}); the class-prompt baseline needs a "
            "Stable Diffusion folder with tokenizer/ and text_encoder/ (sd:DIR)"
        ) from None
    text_encoder.to(device).eval()
    with torch.no_grad():
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(device))[0].float()


def class_baseline(
    base: str,
    backbones: Sequence[str],
    per_class: int = 10,
    classes: Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    guidance_scale: float = 7.5,
    steps: int = 50,
    scheduler: str = "ddim",
    batch_size: int = 8,
    weights: Sequence[str] | None = None,
    limit: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> BaselineResult:
    """Generate ``per_class`` images per ImageNet class from "a high-quality, detailed, and professional
    image of a CLASS, which is a kind of SUPERCLASS" with the plain ``sd:`` base and report each
    backbone's top-5 / top-1 accuracy on them (sample j of every class uses seed j).

    ``classes``: ImageNet indices (default all 1000). With ``out``, images and ``index.json`` make the
    run resumable like :func:`evaluate`; ``baseline.json`` / ``baseline.md`` hold the numbers.
    """
    from featinv.data import to_pil
    from featinv.diffusion.bases import load_base
    from featinv.diffusion.sampler import denoise
    from featinv.evaluation import metrics
    from featinv.features.imagenet import CLASS_PROMPT, imagenet_classes
    from featinv.progress import progress as progress_bar

    if not backbones:
        raise FeatinvError("no backbone given; pass --backbone SPEC (repeatable)")
    if per_class < 1:
        raise FeatinvError(f"per_class must be at least 1, got {per_class}")
    table = imagenet_classes()
    chosen = list(range(len(table))) if classes is None else [int(c) for c in classes]
    bad = [c for c in chosen if not 0 <= c < len(table)]
    if bad or not chosen:
        raise FeatinvError(f"class indices {bad or '[]'} are invalid; use ImageNet indices 0..{len(table) - 1}")
    if not (base.startswith("sd:") or Path(base).expanduser().joinpath("model_index.json").is_file()):
        raise FeatinvError(f"the class-prompt baseline needs a text-conditioned base; {base!r} is not sd:DIR")
    settings = {"base": base, "guidance_scale": float(guidance_scale), "steps": int(steps), "scheduler": scheduler,
                "per_class": per_class, "prompt": CLASS_PROMPT}
    jobs = [(c, j) for c in chosen for j in range(per_class)]
    out_dir = ensure_output_dir(out) if out is not None else None
    done: dict[str, dict[str, Any]] = {}
    if out_dir is not None:
        ensure_output_dir(out_dir / "images")
        if (out_dir / "index.json").is_file():
            index = read_json(out_dir / "index.json", what="baseline index")
            if index.get("settings") != settings:
                raise FeatinvError(f"{out_dir} holds a baseline with other settings; use another --out folder")
            done = {r["key"]: r for r in index.get("rows", [])}
    pending = [job for job in jobs if f"{job[0]}#s{job[1]}" not in done]
    if limit is not None:
        pending = pending[: max(0, limit)]
    generated: dict[str, Image.Image] = {}
    if pending:
        sd = load_base(base if base.startswith("sd:") else f"sd:{base}", device=device)
        uncond = sd.prompt_embeds[1:2]
        latent_shape = (sd.latent_channels, sd.latent_size, sd.latent_size)
        for batch in progress_bar(list(_chunks(pending, batch_size)), description="class prompts", enabled=progress):
            cond = encode_prompts(sd.spec, [table[c].prompt for c, _ in batch], device=device)
            with torch.no_grad():
                latents = denoise(sd.unet, None, sd.make_scheduler(scheduler), None,
                                  cond.to(sd.device), uncond.expand(len(batch), -1, -1), [j for _, j in batch],
                                  latent_shape, steps=steps, guidance_scale=float(guidance_scale))
                images = sd.decode(latents).cpu()
            for (c, j), img01 in zip(batch, images, strict=True):
                key = f"{c}#s{j}"
                row = {"key": key, "class_index": c, "class": table[c].name, "seed": j, "prompt": table[c].prompt}
                generated[key] = to_pil(img01)
                if out_dir is not None:
                    row["file"] = f"images/{c:04d}_{re.sub(r'[^A-Za-z0-9]+', '_', table[c].name)}_s{j}.png"
                    _save_png(generated[key], out_dir / row["file"])
                done[key] = row
            if out_dir is not None:
                write_json(out_dir / "index.json", {"version": INDEX_VERSION, "settings": settings,
                                                    "rows": list(done.values())})
    order = {f"{c}#s{j}": i for i, (c, j) in enumerate(jobs)}
    rows = sorted((r for k, r in done.items() if k in order), key=lambda r: order[r["key"]])
    if not rows:
        raise FeatinvError("no images generated yet (limit 0?); run again without --limit")
    pil = [generated[r["key"]] if r["key"] in generated else Image.open(out_dir / r["file"]).convert("RGB")  # type: ignore[operator]
           for r in rows]
    stacked = torch.stack([_square(im, pil[0].width) for im in pil])
    labels = torch.tensor([r["class_index"] for r in rows])
    models = _extra_backbones(backbones, weights, device)
    scores: dict[str, dict[str, float]] = {}
    for spec, bb in models.items():
        if bb.info.num_classes != len(table):
            raise FeatinvError(f"{spec} has {bb.info.num_classes} classes, not ImageNet's {len(table)}; "
                               "the baseline needs ImageNet-1k classifiers")
        with torch.no_grad():
            logits = torch.cat([bb.logits(bb.normalize(chunk)).cpu() for chunk in stacked.split(batch_size)])
        onehot = torch.full_like(logits, -1.0).scatter_(1, labels[:, None], 1.0)  # the label as "original" top-1
        t5, t1 = metrics.topk_match(onehot, logits, 5), metrics.topk_match(onehot, logits, 1)
        for row, a, b in zip(rows, t5.tolist(), t1.tolist(), strict=True):
            row.setdefault("backbones", {})[spec] = {"top5": a, "top1": b}
        scores[spec] = {"top5": float(t5.float().mean()), "top1": float(t1.float().mean())}
    summary = {**settings, "classes": len({r["class_index"] for r in rows}), "n_images": len(rows),
               "complete": len(rows) == len(jobs), "backbones": scores}
    result = BaselineResult(summary=summary, rows=rows, out=out_dir, images=pil if out_dir is None else None)
    if out_dir is not None:
        write_json(out_dir / "baseline.json", {"summary": summary, "rows": rows})
        write_text(out_dir / "baseline.md", baseline_markdown(summary))
    return result


def baseline_markdown(summary: dict[str, Any]) -> str:
    """Table 3's "MiniSD top5(1)" column: one row per backbone."""
    lines = ["| Model | base top5(1) | n |", "|---|---|---|"]
    for spec, s in summary["backbones"].items():
        lines.append(f"| {spec} | {_fmt_pct(s['top5'])} ({_fmt_pct(s['top1'])}) | {summary['n_images']} |")
    return "\n".join(lines) + "\n"
