"""Reconstruct image files with a trained FeatInv run: PNGs plus a JSON index, resumable.

Each (image, seed) pair becomes ``<name>_s<seed>.png`` in the output folder (``a_png``/``a_jpg`` for two
images named ``a``). ``index.json`` records the run, the sampling settings and every output; it is rewritten
(atomically) after each batch, and a rerun skips outputs that already exist, so an interrupted run picks up
where it stopped. A rerun with other sampling settings is refused unless ``overwrite`` is set, so a folder
never mixes settings.

Under ``torchrun`` / ``accelerate launch`` each process takes its :func:`~featinv.evaluation.sources.shard` of
the images (all seeds of an image stay on one process) and keeps its rows in its own index part
(``index-rank<r>-of-<n>.json``), so no two processes write one file; after a barrier rank 0 merges the parts
into ``index.json`` and deletes them. Every start reads ``index.json`` and any parts left by a killed run, so a
rerun resumes with any number of processes: the image, not the process, is the unit of work.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featinv.errors import FeatinvError
from featinv.io import ensure_output_dir, locks_output, read_json
from featinv.outputs import ResumableIndex, save_png

INDEX_NAME = "index.json"
PARTS_GLOB = "index-rank*-of-*.json"  # one process's rows while a multi-process run is under way


@dataclass
class ReconstructSummary:
    """What a :func:`reconstruct_images` call did."""

    index_path: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)      # already there from an earlier run
    unreadable: list[Path] = field(default_factory=list)   # inputs that are not decodable images


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "image"


def _output_names(inputs: Sequence[str | os.PathLike[str]],
                  exclude: Sequence[str | os.PathLike[str]] = ()) -> list[tuple[Path, str]]:
    """(image path, unique output stem) for every image under the inputs, in a stable order; nothing under
    ``exclude`` (the output folder, when it lies inside an input folder, so reruns never re-ingest it).

    A stem is the image's relative path without its extension (``cat.png`` -> ``cat``). Where two images
    would share one (``a.png`` and ``a.jpg``), both keep their extension (``a_png``, ``a_jpg``); where that
    still collides (the same relative path under two inputs) a short hash of the full path is added. So a
    stem depends only on the image and on its namesakes, never on listing order or on numbering.
    """
    from featinv.data import find_images

    listed: list[tuple[Path, Path]] = []
    for entry in inputs:
        listing = find_images(entry, exclude=exclude)
        listed.extend((path, path.relative_to(listing.root)) for path in listing.paths)
    listed = list(dict.fromkeys(listed))  # one image given twice is reconstructed once

    def stems(name_of: Callable[[Path, Path], str], names: list[str]) -> list[str]:
        counts = Counter(names)
        return [name if counts[name] == 1 else name_of(path, rel) for (path, rel), name in zip(listed, names, strict=True)]

    plain = [_sanitise("__".join(rel.with_suffix("").parts)) for _, rel in listed]
    with_ext = stems(lambda _p, rel: _sanitise("__".join(rel.parts).replace(".", "_")), plain)
    hashed = stems(lambda path, rel: _sanitise("__".join(rel.parts).replace(".", "_")) + "_"
                   + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8], with_ext)
    return [(path, stem) for (path, _), stem in zip(listed, hashed, strict=True)]


def _finished_png(path: Path) -> bool:
    """Whether an output left by an earlier run is a whole image with content (a flat square, as broken
    weights used to give, or a damaged file is redone)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            extrema = img.getextrema()
    except (OSError, ValueError, SyntaxError):
        return False
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return any(low != high for low, high in bands)


def _pending_outputs(items: list[tuple[Path, str]], seeds: list[int], out_dir: Path, overwrite: bool,
                     summary: ReconstructSummary, entries: dict[str, dict[str, Any]]) -> list[tuple[Path, int, Path]]:
    """The (image, seed, output file) jobs still to do; finished ones are counted in ``summary.skipped`` and
    kept in the index, so a rerun resumes.

    An output counts as finished when its file is a whole image and the index does not attribute it to
    another image. Index rows for these images under other file names (from an older naming) are dropped,
    so every image is listed once.
    """
    planned = {(str(path), seed): f"{stem}_s{seed}.png" for path, stem in items for seed in seeds}
    pending: list[tuple[Path, int, Path]] = []
    for (source, seed), name in planned.items():
        target, row = out_dir / name, entries.get(name)
        if not overwrite and target.exists() and (row is None or row.get("source") == source) and _finished_png(target):
            summary.skipped.append(target)
            entries.setdefault(name, {"file": name, "source": source, "seed": seed})
        else:
            entries.pop(name, None)
            pending.append((Path(source), seed, target))
    for name, row in list(entries.items()):
        if planned.get((row.get("source"), row.get("seed")), name) != name:
            del entries[name]
    return pending


@locks_output("out")
def reconstruct_images(run: Any, images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                       out: str | os.PathLike[str], seeds: Sequence[int] = (0,), guidance_scale: float | None = None,
                       steps: int = 50, scheduler: str = "ddim", batch_size: int = 8, device: str = "cpu",
                       resize: bool = False, overwrite: bool = False, progress: bool = True,
                       bf16: bool = False, feature_guidance: Any = 0.0, control_strength: float = 1.0,
                       guess_mode: bool = False) -> ReconstructSummary:
    """Reconstruct every image (files or folders) once per seed into ``out``.

    run: a run folder or a loaded :class:`~featinv.diffusion.model.FeatInv`. ``resize`` writes the
    images at the backbone's input size instead of the base resolution; ``bf16`` autocasts the
    denoiser on CUDA; ``feature_guidance`` (a strength or a ``FeatureGuidance``) steers sampling toward the
    features. Each output's ``fidelity`` (cosine to its target map) is recorded in the index.
    ``control_strength`` / ``guess_mode``: the authors' sampler controls (1.0 / off = the paper's sampler).
    Started as one of several processes, this call does its shard of the images (see the module docstring);
    its summary lists only its own outputs.
    """
    from featinv.diffusion.controlnet import ControlScales
    from featinv.diffusion.guidance import FeatureGuidance
    from featinv.diffusion.model import load_model
    from featinv.evaluation.sources import process_group, shard

    steering = FeatureGuidance.of(feature_guidance)
    control = ControlScales(control_strength, bool(guess_mode))
    inputs, seeds = _checked_arguments(images, seeds, batch_size, steps)
    items = _output_names(inputs, exclude=[out])
    rank, world, barrier = process_group(device)
    if world > 1 and device == "cuda":  # one GPU per process under accelerate launch / torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    model = load_model(run, device=device)
    model.base.make_scheduler(scheduler)  # an unknown sampler fails here, before anything is written
    out_dir = ensure_output_dir(out)
    guidance = model.guidance_scale if guidance_scale is None else float(guidance_scale)
    size = list(model.backbone.info.input_size) if resize else [model.base.resolution] * 2
    index = _open_index(out_dir, _settings(run, model, guidance, steps, scheduler, size, steering, control), overwrite)
    barrier()  # every process has read the parts of earlier runs before any process rewrites its own
    entries = index.rows
    mine = shard(items, rank, world)
    summary = ReconstructSummary(index.path)
    pending = _pending_outputs(mine, seeds, out_dir, overwrite, summary, entries)
    my_sources = {str(path) for path, _ in mine}
    part = index if world == 1 else _index_file(out_dir / f"index-rank{rank}-of-{world}.json", index.settings)

    def save_index() -> None:
        rows = entries.values() if world == 1 else [e for e in entries.values() if e.get("source") in my_sources]
        part.save(sorted(rows, key=lambda e: e["file"]), unreadable=[str(p) for p in summary.unreadable])

    sampling = dict(guidance_scale=guidance, steps=steps, scheduler=scheduler, batch_size=batch_size,
                    progress=False, bf16=bf16, feature_guidance=steering, control_strength=control.strength,
                    guess_mode=control.guess_mode)
    _reconstruct_all(model, pending, batch_size, sampling, size if resize else None, summary, entries,
                     save_index, progress)
    if world > 1:
        save_index()  # even when this process had nothing to do: rank 0 reads every part
        barrier()
    if rank == 0:
        _merge_parts(index, entries, items, world, summary.unreadable)
    return summary


def _settings(run: Any, model: Any, guidance: float, steps: int, scheduler: str, size: list[int], steering: Any,
              control: Any) -> dict[str, Any]:
    """What the index records: a rerun resumes only with the same settings."""
    from featinv.diffusion.model import FeatInv

    run_name = str(Path(run).resolve()) if not isinstance(run, FeatInv) else repr(model)
    settings = {"run": run_name, "guidance_scale": guidance, "steps": steps, "scheduler": scheduler, "size": size}
    # null when off: folders from before feature guidance (no such key) still resume, and a guided folder
    # rerun without guidance (or the reverse) is refused as a change of settings
    settings["feature_guidance"] = steering.describe() if steering.active else None
    settings.update({} if control.is_default else control.describe())  # absent at the defaults, as before
    return settings


def _open_index(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> ResumableIndex:
    """The folder's index with the rows of ``index.json`` and of the parts a killed multi-process run left
    (theirs are newer); none with ``overwrite``. Other settings in any of them are refused."""
    index = _index_file(out_dir / INDEX_NAME, settings)
    if overwrite:
        return index

    def refusal(changed: list[str]) -> str:
        return (f"{out_dir} holds reconstructions made with other settings ({', '.join(changed)}); "
                "use another --out folder or pass --overwrite")

    index.load(refusal)
    for path in sorted(out_dir.glob(PARTS_GLOB), key=lambda p: p.stat().st_mtime_ns):  # the newest row wins
        index.rows.update(_index_file(path, settings).load(refusal))
    return index


def _index_file(path: Path, settings: dict[str, Any]) -> ResumableIndex:
    """``index.json`` or one process's part of it (the flat layout: settings beside the ``items``)."""
    return ResumableIndex(path, settings, what="reconstruction index", key="file", rows_field="items", versioned=False)


def _merge_parts(index: ResumableIndex, entries: dict[str, dict[str, Any]], items: list[tuple[Path, str]],
                 world: int, unreadable: list[Path]) -> None:
    """Rank 0, after every process finished: the rows of each process's part replace the rows it started
    from for its shard, ``index.json`` is rewritten with all of them and every part (this run's, and older
    runs' already read at the start) is deleted. Refuses a folder of which no image could be read."""
    from featinv.evaluation.sources import shard

    bad = {str(p) for p in unreadable}
    for rank in range(1, world):
        path = index.path.with_name(f"index-rank{rank}-of-{world}.json")
        stored = read_json(path, what="reconstruction index")
        theirs = {str(p) for p, _ in shard(items, rank, world)}
        for name in [n for n, row in entries.items() if row.get("source") in theirs]:
            del entries[name]
        entries.update((row["file"], row) for row in stored.get("items", []))
        bad.update(stored.get("unreadable", []))
    listed = [str(p) for p in unreadable] + sorted(bad - {str(p) for p in unreadable})
    if listed and not entries:
        raise FeatinvError(f"none of the {len(listed)} images could be read (corrupt, truncated or not "
                           f"images, e.g. {listed[0]}); pass readable .png/.jpg images")
    index.save(sorted(entries.values(), key=lambda e: e["file"]), unreadable=listed)
    for path in index.path.parent.glob(PARTS_GLOB):
        path.unlink(missing_ok=True)


def _reconstruct_all(model: Any, pending: list[tuple[Path, int, Path]], batch_size: int, sampling: dict[str, Any],
                     size: list[int] | None, summary: ReconstructSummary, entries: dict[str, dict[str, Any]],
                     save_index: Callable[[], None], progress: bool) -> None:
    """Every pending job, a batch at a time, saving the index after each batch that wrote something."""
    from featinv.progress import make_progress

    bar = make_progress() if progress and pending else None
    task = bar.add_task("reconstructing", total=len(pending)) if bar else None
    if bar:
        bar.start()
    try:
        for start in range(0, len(pending), batch_size):
            if _reconstruct_chunk(model, pending[start:start + batch_size], sampling, size, summary, entries):
                save_index()
            if bar:
                bar.advance(task, len(pending[start:start + batch_size]))
    finally:
        if bar:
            bar.stop()


def _checked_arguments(images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], seeds: Sequence[int],
                       batch_size: int, steps: int) -> tuple[list[str | os.PathLike[str]], list[int]]:
    """The inputs as a list and the seeds as ints, after failing fast on arguments that cannot work."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise FeatinvError("no seeds given; pass e.g. --seeds 0,1,2")
    if batch_size < 1 or steps < 1:
        raise FeatinvError(f"batch size ({batch_size}) and steps ({steps}) must be at least 1")
    inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not inputs:
        raise FeatinvError("no images given; pass image files or folders")
    return inputs, seeds


def _reconstruct_chunk(model: Any, chunk: list[tuple[Path, int, Path]], sampling: dict[str, Any],
                       size: list[int] | None, summary: ReconstructSummary, entries: dict[str, dict[str, Any]]) -> bool:
    """Reconstruct one batch and write its PNGs (resized to ``size`` when given); unreadable images are
    counted and left out. Whether anything was written (then the index needs saving)."""
    from featinv.data import to_pil, try_open_image

    opened: dict[Path, Any] = {}
    for path, _, _ in chunk:
        if path not in opened:
            opened[path] = try_open_image(path)
    bad = [p for p, img in opened.items() if img is None]
    summary.unreadable.extend(p for p in bad if p not in summary.unreadable)
    chunk = [c for c in chunk if opened[c[0]] is not None]
    if not chunk:
        return False
    feats = model.features([opened[path] for path, _, _ in chunk])
    rec = model.reconstruct(features=feats, seeds=[seed for _, seed, _ in chunk], **sampling)
    pictures = rec.resized(tuple(size)) if size is not None else rec.images
    for (path, seed, target), picture, score in zip(chunk, pictures, rec.fidelity, strict=True):
        save_png(to_pil(picture), target)
        summary.written.append(target)
        entries[target.name] = {"file": target.name, "source": str(path), "seed": seed,
                                "fidelity": round(float(score), 6)}
    return True
