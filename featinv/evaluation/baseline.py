"""The class-prompt baseline (paper Table 3, "MiniSD top5(1)"): how often each classifier recognises the
class in images the plain ``sd:`` base generates from a class prompt, without any feature conditioning."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from featinv.errors import FeatinvError
from featinv.evaluation.evaluate import load_backbones, square
from featinv.evaluation.sources import chunks
from featinv.evaluation.tables import baseline_markdown
from featinv.io import ensure_output_dir, locks_output, write_json, write_text
from featinv.outputs import ResumableIndex, save_png

__all__ = ["BaselineResult", "class_baseline", "encode_prompts"]


@dataclass
class BaselineResult:
    """Top-5 / top-1 accuracy of each backbone on images the plain base generates from class prompts."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    out: Path | None = None
    images: list[Image.Image] | None = None


def encode_prompts(base_spec: str, prompts: Sequence[str], device: str = "cpu") -> torch.Tensor:
    """CLIP embeddings ``[N, L, D]`` of arbitrary prompts for an ``sd:`` base.

    A convenience over :meth:`featinv.diffusion.bases.StableDiffusionBase.encode_prompts` (the one
    prompt-embedding path); with a loaded base, call that method instead.
    """
    from featinv.diffusion.bases import StableDiffusionBase, load_base

    base = load_base(base_spec if base_spec.startswith("sd:") else f"sd:{base_spec}", device=device)
    if not isinstance(base, StableDiffusionBase):
        raise FeatinvError(f"{base_spec} is not a text-conditioned base; prompts need an sd:DIR base")
    return base.encode_prompts(prompts)


@locks_output("out")
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
    from featinv.features.imagenet import CLASS_PROMPT, imagenet_classes

    table = imagenet_classes()
    chosen = _chosen_classes(base, backbones, per_class, classes, len(table))
    settings = {"base": base, "guidance_scale": float(guidance_scale), "steps": int(steps), "scheduler": scheduler,
                "per_class": per_class, "prompt": CLASS_PROMPT}
    jobs = [(c, j) for c in chosen for j in range(per_class)]
    out_dir = ensure_output_dir(out) if out is not None else None
    done: dict[str, dict[str, Any]] = {}
    index: ResumableIndex | None = None
    if out_dir is not None:
        ensure_output_dir(out_dir / "images")
        index = ResumableIndex(out_dir / "index.json", settings, what="baseline index")
        done = index.load(lambda _: f"{out_dir} holds a baseline with other settings; use another --out folder")
    pending = [job for job in jobs if f"{job[0]}#s{job[1]}" not in done]
    if limit is not None:
        pending = pending[: max(0, limit)]
    generated: dict[str, Image.Image] = {}
    if pending:
        _generate(base, pending, table, done, generated, out_dir, index,
                  dict(scheduler=scheduler, steps=steps, guidance_scale=float(guidance_scale)), batch_size, device,
                  progress)
    order = {f"{c}#s{j}": i for i, (c, j) in enumerate(jobs)}
    rows = sorted((r for k, r in done.items() if k in order), key=lambda r: order[r["key"]])
    if not rows:
        raise FeatinvError("no images generated yet (limit 0?); run again without --limit")
    pil = [generated[r["key"]] if r["key"] in generated else Image.open(out_dir / r["file"]).convert("RGB")  # type: ignore[operator]
           for r in rows]
    scores = _score(rows, pil, load_backbones(backbones, weights, device), len(table), batch_size)
    summary = {**settings, "classes": len({r["class_index"] for r in rows}), "n_images": len(rows),
               "complete": len(rows) == len(jobs), "backbones": scores}
    result = BaselineResult(summary=summary, rows=rows, out=out_dir, images=pil if out_dir is None else None)
    if out_dir is not None:
        write_json(out_dir / "baseline.json", {"summary": summary, "rows": rows})
        write_text(out_dir / "baseline.md", baseline_markdown(summary))
    return result


def _chosen_classes(base: str, backbones: Sequence[str], per_class: int, classes: Sequence[int] | None,
                    n_classes: int) -> list[int]:
    """The ImageNet indices to prompt for, after failing fast on arguments that could only fail later."""
    if not backbones:
        raise FeatinvError("no backbone given; pass --backbone SPEC (repeatable)")
    if per_class < 1:
        raise FeatinvError(f"per_class must be at least 1, got {per_class}")
    chosen = list(range(n_classes)) if classes is None else [int(c) for c in classes]
    bad = [c for c in chosen if not 0 <= c < n_classes]
    if bad or not chosen:
        raise FeatinvError(f"class indices {bad or '[]'} are invalid; use ImageNet indices 0..{n_classes - 1}")
    if not (base.startswith("sd:") or Path(base).expanduser().joinpath("model_index.json").is_file()):
        raise FeatinvError(f"the class-prompt baseline needs a text-conditioned base; {base!r} is not sd:DIR")
    return chosen


def _generate(base: str, pending: list[tuple[int, int]], table: Sequence[Any], done: dict[str, dict[str, Any]],
              generated: dict[str, Image.Image], out_dir: Path | None, index: ResumableIndex | None,
              sampling: dict[str, Any], batch_size: int, device: str, progress: bool) -> None:
    """Generate the pending (class, seed) images batch by batch into ``generated`` and ``done``, saving the
    index after every batch so an interrupted baseline resumes there."""
    from featinv.data import to_pil
    from featinv.diffusion.bases import load_base
    from featinv.diffusion.sampler import denoise
    from featinv.progress import progress as progress_bar

    sd = load_base(base if base.startswith("sd:") else f"sd:{base}", device=device)
    uncond = sd.prompt_embeds[1:2]
    latent_shape = (sd.latent_channels, sd.latent_size, sd.latent_size)
    for batch in progress_bar(list(chunks(pending, batch_size)), description="class prompts", enabled=progress):
        cond = sd.encode_prompts([table[c].prompt for c, _ in batch])
        with torch.no_grad():
            latents = denoise(sd.unet, None, sd.make_scheduler(sampling["scheduler"]), None,
                              cond.to(sd.device), uncond.expand(len(batch), -1, -1), [j for _, j in batch],
                              latent_shape, steps=sampling["steps"], guidance_scale=sampling["guidance_scale"])
            images = sd.decode(latents).cpu()
        for (c, j), img01 in zip(batch, images, strict=True):
            key = f"{c}#s{j}"
            row = {"key": key, "class_index": c, "class": table[c].name, "seed": j, "prompt": table[c].prompt}
            generated[key] = to_pil(img01)
            if out_dir is not None:
                row["file"] = f"images/{c:04d}_{re.sub(r'[^A-Za-z0-9]+', '_', table[c].name)}_s{j}.png"
                save_png(generated[key], out_dir / row["file"])
            done[key] = row
        if index is not None:
            index.save()


def _score(rows: list[dict[str, Any]], pil: list[Image.Image], models: dict[str, Any], n_classes: int,
           batch_size: int) -> dict[str, dict[str, float]]:
    """Each backbone's top-5 / top-1 accuracy on the images (the class label counts as the "original" top-1),
    recorded per row too."""
    from featinv.evaluation import metrics

    stacked = torch.stack([square(im, pil[0].width) for im in pil])
    labels = torch.tensor([r["class_index"] for r in rows])
    scores: dict[str, dict[str, float]] = {}
    for spec, bb in models.items():
        if bb.info.num_classes != n_classes:
            raise FeatinvError(f"{spec} has {bb.info.num_classes} classes, not ImageNet's {n_classes}; "
                               "the baseline needs ImageNet-1k classifiers")
        with torch.no_grad():
            logits = torch.cat([bb.logits(bb.normalize(chunk)).cpu() for chunk in stacked.split(batch_size)])
        onehot = torch.full_like(logits, -1.0).scatter_(1, labels[:, None], 1.0)  # the label as "original" top-1
        t5, t1 = metrics.topk_match(onehot, logits, 5), metrics.topk_match(onehot, logits, 1)
        for row, a, b in zip(rows, t5.tolist(), t1.tolist(), strict=True):
            row.setdefault("backbones", {})[spec] = {"top5": a, "top1": b}
        scores[spec] = {"top5": float(t5.float().mean()), "top1": float(t1.float().mean())}
    return scores
