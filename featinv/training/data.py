"""Training images: folders or in-memory photos, paper augmentation, deterministic sharded batches.

Why it looks like this:
- Workers only decode and crop (uint8 tensors, cheap to pass between processes); the backbone runs
  batched in the training step, never per image here.
- Every random choice (epoch order, crop box, flips) is derived from ``(seed, epoch, position)``, not
  from a global generator, so a resumed run and a run with more DataLoader workers see exactly the
  same samples, and each process of a multi-GPU run takes its own disjoint slice of every global batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from featinv.data import as_pil, center_crop_box, find_images, is_image_object, try_open_image
from featinv.errors import FeatinvError

CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults (the paper names only the transform)
CROP_RATIO = (3 / 4, 4 / 3)


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from several integers (seed, epoch, position ...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


# ----------------------------------------------------------------------------------------------- sources
@dataclass
class TrainingImages:
    """The images a run trains on: file paths or PIL images, plus what was skipped and why."""

    items: list[Path | Image.Image]
    non_images: int = 0
    unreadable: list[Path] = field(default_factory=list)
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        """One line for the log: how many images were found and how many skipped."""
        skipped = self.non_images + len(self.unreadable)
        where = f" from {self.root}" if self.root else " (in memory)"
        if not skipped:
            return f"{len(self.items)} images{where}"
        return (f"{len(self.items)} images{where}; skipped {skipped} files "
                f"({self.non_images} not images, {len(self.unreadable)} unreadable)")


def _header_ok(path: Path) -> bool:
    """Cheap check (header only) that a file is an image PIL can decode."""
    try:
        with Image.open(path) as img:
            return img.width > 0 and img.height > 0
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return False


def load_training_images(
    data: str | os.PathLike[str] | Sequence[Image.Image] | TrainingImages,
    max_samples: int | None = None,
    seed: int = 0,
) -> TrainingImages:
    """Collect training images from a folder (recursive) or a list of PIL images or numpy arrays.

    Non-image files and files whose header PIL cannot read are skipped and counted; an empty source is
    refused. ``max_samples`` takes a seeded random subset (so an ImageNet-layout folder keeps all
    classes), scanning only as many files as needed.
    """
    if max_samples is not None and max_samples < 1:
        raise FeatinvError(f"--max-samples must be at least 1, got {max_samples}")
    if isinstance(data, TrainingImages):
        images = data
    elif isinstance(data, (str, os.PathLike)):
        listing = find_images(data, recursive=True)
        paths = list(listing.paths)
        if max_samples is not None and max_samples < len(paths):
            order = np.random.default_rng(seed).permutation(len(paths))
            paths = [paths[i] for i in order]
        good: list[Path] = []
        bad: list[Path] = []
        chunk = 256 if max_samples is None else max(32, max_samples)
        with ThreadPoolExecutor(max_workers=8) as pool:
            for start in range(0, len(paths), chunk):
                batch = paths[start:start + chunk]
                for path, ok in zip(batch, pool.map(_header_ok, batch), strict=True):
                    (good if ok else bad).append(path)
                if max_samples is not None and len(good) >= max_samples:
                    break
        if max_samples is not None:
            good = sorted(good[:max_samples])
        if not good:
            raise FeatinvError(
                f"no readable images in {data} ({len(bad)} unreadable, {len(listing.skipped)} other files); "
                "pass a folder containing valid .png/.jpg images"
            )
        images = TrainingImages(good, non_images=len(listing.skipped), unreadable=bad, root=Path(data))
    else:
        items = list(data)
        bad_items = [type(item).__name__ for item in items if not is_image_object(item)]
        if bad_items:
            raise FeatinvError(f"training data must be a folder, PIL images or numpy arrays, got {bad_items[0]}; "
                               "pass a folder path")
        images = TrainingImages([as_pil(item) for item in items])
    if max_samples is not None:
        images = TrainingImages(images.items[:max_samples], images.non_images, images.unreadable, images.root)
    if not images.items:
        raise FeatinvError("no training images given; pass a folder containing .png/.jpg images")
    return images


def make_crops(images: Sequence[Image.Image], n: int, size: int, seed: int = 0,
               scale: tuple[float, float] = (0.25, 1.0)) -> list[Image.Image]:
    """``n`` random square-ish crops (resized to ``size``) of a few photos: a small in-memory training set.

    The demo trains on crops of the photos shipped with scikit-image / scikit-learn this way.
    """
    if not images:
        raise FeatinvError("make_crops needs at least one image")
    crops = []
    for i in range(n):
        img = images[i % len(images)].convert("RGB")
        generator = torch.Generator().manual_seed(mix_seed(seed, i))
        box = random_resized_crop_box(img.width, img.height, generator, scale=scale)
        crop = img.resize((size, size), Image.BICUBIC, box=box)
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops


# ----------------------------------------------------------------------------------------- augmentation
def random_resized_crop_box(width: int, height: int, generator: torch.Generator,
                            scale: tuple[float, float] = CROP_SCALE,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, right, bottom), drawn from ``generator``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand((), generator=generator).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return left, top, left + w, top + h
    return center_crop_box(width, height, ratio)


def _to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def crop_views(img: Image.Image, box: tuple[int, int, int, int], sizes: dict[str, int],
               hflip: bool = False, vflip: bool = False) -> dict[str, torch.Tensor]:
    """The same crop resized to each named size, flipped alike: uint8 tensors [3, s, s]."""
    views = {}
    for name, size in sizes.items():
        tensor = _to_uint8_tensor(img.resize((size, size), Image.BICUBIC, box=box))
        if hflip:
            tensor = tensor.flip(-1)
        if vflip:
            tensor = tensor.flip(-2)
        views[name] = tensor
    return views


def _open_for(path: Path, box_fraction: tuple[float, float, float, float], out: int) -> tuple[Image.Image, tuple]:
    """Decode a JPEG at the smallest scale that still covers the crop at ``out`` pixels (much faster)."""
    with Image.open(path) as img:
        full = img.size
        crop_w = max(1e-6, (box_fraction[2] - box_fraction[0]) * full[0])
        crop_h = max(1e-6, (box_fraction[3] - box_fraction[1]) * full[1])
        need = (math.ceil(full[0] * out / crop_w), math.ceil(full[1] * out / crop_h))
        if img.format == "JPEG" and need[0] < full[0] and need[1] < full[1]:
            img.draft("RGB", need)
        img.load()
        rgb = img.convert("RGB")
    return rgb, full


class AugmentedCrops(torch.utils.data.Dataset):
    """Paper augmentation: RandomResizedCrop + horizontal/vertical flips, the same crop at several sizes.

    Indexed by ``(index, sample_seed)`` pairs from :class:`ShardedBatches`. ``sizes`` maps output names to
    square sizes, e.g. ``{"crop": 224, "target": 32}`` (backbone input, base resolution). With
    ``augment=False`` a centred square crop is used (validation, fixed caches).
    """

    def __init__(self, images: TrainingImages, sizes: dict[str, int], augment: bool = True,
                 hflip: bool = True, vflip: bool = True, scale: tuple[float, float] = CROP_SCALE) -> None:
        self.images = images
        self.sizes = dict(sizes)
        self.augment = augment
        self.hflip = hflip
        self.vflip = vflip
        self.scale = scale

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int, generator: torch.Generator) -> tuple[Image.Image, tuple[int, int, int, int]]:
        item = self.images.items[index]
        if isinstance(item, Image.Image):
            box = self._box(item.width, item.height, generator)
            return item, box
        with Image.open(item) as header:
            width, height = header.size
        box = self._box(width, height, generator)
        fraction = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
        img, _ = _open_for(Path(item), fraction, max(self.sizes.values()))
        scaled = (round(fraction[0] * img.width), round(fraction[1] * img.height),
                  max(round(fraction[2] * img.width), round(fraction[0] * img.width) + 1),
                  max(round(fraction[3] * img.height), round(fraction[1] * img.height) + 1))
        return img, scaled

    def _box(self, width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        if self.augment:
            return random_resized_crop_box(width, height, generator, scale=self.scale)
        return center_crop_box(width, height)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        index, sample_seed = key if isinstance(key, tuple) else (int(key), int(key))
        # an image that decodes badly despite a good header is replaced by the next one (deterministic)
        for attempt in range(len(self.images)):
            generator = torch.Generator().manual_seed(mix_seed(sample_seed, attempt))
            current = (index + attempt) % len(self.images)
            try:
                img, box = self._load(current, generator)
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
                continue
            hflip = self.augment and self.hflip and bool(torch.rand((), generator=generator) < 0.5)
            vflip = self.augment and self.vflip and bool(torch.rand((), generator=generator) < 0.5)
            views = crop_views(img, box, self.sizes, hflip=hflip, vflip=vflip)
            views["index"] = torch.tensor(current)
            return views
        example = next((str(i) for i in self.images.items if not isinstance(i, Image.Image)), "")
        raise FeatinvError(f"none of the {len(self.images)} training images could be decoded (corrupt or truncated"
                           f"{', e.g. ' + example if example else ''}); replace or remove them")


class TensorSamples(torch.utils.data.Dataset):
    """Precomputed samples (e.g. cached features + targets), indexed like :class:`AugmentedCrops`."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError("all cached tensors must have the same length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        index = key[0] if isinstance(key, tuple) else int(key)
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def open_pil(item: Path | Image.Image) -> Image.Image | None:
    """A PIL image for a training item (None when a file no longer decodes)."""
    return item if isinstance(item, Image.Image) else try_open_image(item)


# ------------------------------------------------------------------------------------------ batching
@dataclass(frozen=True)
class Schedule:
    """How a dataset of ``n`` samples maps to optimizer steps for a given global batch."""

    n: int
    batch_size: int          # per process, per micro-batch
    world_size: int = 1
    grad_accum: int = 1

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def samples_per_step(self) -> int:
        return self.global_batch * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        """Full optimizer steps per pass (at least one: tiny datasets are cycled to fill a step)."""
        return max(1, self.n // self.samples_per_step)

    def total_steps(self, epochs: float, max_steps: int | None = None) -> int:
        """Optimizer steps of the run: ``max_steps`` if given, else ``epochs`` worth."""
        if max_steps is not None:
            return int(max_steps)
        return max(1, math.ceil(epochs * self.steps_per_epoch))


def epoch_order(n: int, length: int, seed: int, epoch: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` for one epoch, cycled (fresh permutations) up to ``length``."""
    chunks = []
    total = 0
    round_ = 0
    while total < length:
        generator = torch.Generator().manual_seed(mix_seed(seed, epoch, round_))
        chunks.append(torch.randperm(n, generator=generator))
        total += n
        round_ += 1
    return torch.cat(chunks)[:length]


class ShardedBatches(torch.utils.data.Sampler):
    """Batch sampler: for optimizer steps ``start_step .. total_steps-1``, yield this process's micro-batches.

    Global micro-batch ``m`` of an epoch covers positions ``[m*G, (m+1)*G)`` of the epoch order
    (G = batch_size x world_size); process ``rank`` takes ``[m*G + rank*B, m*G + (rank+1)*B)``. So the
    processes of a multi-GPU run see disjoint data, and resuming at a step skips exactly what was seen.
    Each element is ``(index, sample_seed)``; the seed depends on (seed, epoch, global position) only.
    """

    def __init__(self, schedule: Schedule, seed: int, rank: int = 0, start_step: int = 0,
                 total_steps: int | None = None) -> None:
        if not 0 <= rank < schedule.world_size:
            raise ValueError(f"rank {rank} outside world size {schedule.world_size}")
        self.schedule = schedule
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.total_steps = schedule.steps_per_epoch if total_steps is None else total_steps

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.schedule.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.schedule
        per_epoch = s.steps_per_epoch
        length = per_epoch * s.samples_per_step
        order: torch.Tensor | None = None
        current_epoch = -1
        for step in range(self.start_step, self.total_steps):
            epoch, step_in_epoch = divmod(step, per_epoch)
            if epoch != current_epoch:
                order = epoch_order(s.n, length, self.seed, epoch)
                current_epoch = epoch
            for micro in range(s.grad_accum):
                m = step_in_epoch * s.grad_accum + micro
                start = m * s.global_batch + self.rank * s.batch_size
                positions = range(start, start + s.batch_size)
                yield [(int(order[p]), mix_seed(self.seed, epoch, p)) for p in positions]  # type: ignore[index]
