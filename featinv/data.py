"""Images in: folders (recursive, ImageNet layout works), single files, and photos shipped with packages."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from featinv.errors import FeatinvError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".jfif"})


@dataclass
class ImageList:
    """Image paths found under a folder, plus the files that were skipped and why."""

    root: Path
    paths: list[Path]
    skipped: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def classes(self) -> dict[str, list[Path]]:
        """Group by immediate subfolder of the root (a flat folder is one class named after it)."""
        groups: dict[str, list[Path]] = {}
        for path in self.paths:
            rel = path.relative_to(self.root)
            name = rel.parts[0] if len(rel.parts) > 1 else self.root.name
            groups.setdefault(name, []).append(path)
        return groups


def find_images(path: str | os.PathLike[str], recursive: bool = True) -> ImageList:
    """List image files (by extension) in a folder, or the single image file given.

    Non-image files are counted in ``skipped``; a missing or image-less folder is refused clearly.
    """
    root = Path(path)
    if not root.exists():
        raise FeatinvError(f"data path {root} does not exist; pass an image file or a folder of images")
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise FeatinvError(f"{root} is not an image file ({root.suffix or 'no extension'}); pass a .png/.jpg image")
        return ImageList(root.parent, [root])
    if not os.access(root, os.R_OK | os.X_OK):
        raise FeatinvError(f"data folder {root} is not readable; fix its permissions or pass another folder")
    found: list[Path] = []
    skipped: list[Path] = []
    walker = root.rglob("*") if recursive else root.glob("*")
    for candidate in sorted(walker):
        if candidate.is_dir() or any(part.startswith(".") for part in candidate.relative_to(root).parts):
            continue
        (found if candidate.suffix.lower() in IMAGE_EXTENSIONS else skipped).append(candidate)
    if not found:
        raise FeatinvError(f"no images found in {root} ({len(skipped)} other files); pass a folder containing .png/.jpg images")
    return ImageList(root, found, skipped)


def try_open_image(path: str | os.PathLike[str]) -> Image.Image | None:
    """Open an image as RGB, or None when the file is corrupt, truncated or not an image."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image as RGB or fail with one line naming the file."""
    if not Path(path).is_file():
        raise FeatinvError(f"image {path} does not exist; check the path")
    img = try_open_image(path)
    if img is None:
        raise FeatinvError(f"{path} is not a readable image (corrupt, truncated or another format); replace or remove it")
    return img


def load_images(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, Image.Image]]:
    """Open every image given (files or folders) as (name, RGB image) pairs, in a stable order."""
    items: list[tuple[str, Image.Image]] = []
    for path in paths:
        listing = find_images(path)
        for file in listing.paths:
            items.append((str(file.relative_to(listing.root)), open_image(file)))
    return items


def to_tensor01(img: Image.Image):  # -> torch.Tensor
    """PIL RGB -> float tensor [3, H, W] in [0, 1]."""
    import torch

    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_uint8(images01) -> np.ndarray:  # images01: torch.Tensor | np.ndarray
    """``[3, H, W]`` (or ``[H, W, 3]``) floats in [0, 1], tensor or array -> ``[H, W, 3]`` uint8 (clamped,
    rounded): the one float -> 8-bit conversion (PNGs, grids and figure panels all go through it)."""
    import torch

    array = images01.detach().float().cpu().numpy() if isinstance(images01, torch.Tensor) else np.asarray(images01)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype == np.uint8:
        return array.copy()
    return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def to_pil(tensor01) -> Image.Image:  # tensor01: torch.Tensor [3, H, W]
    """Float tensor [3, H, W] in [0, 1] -> PIL RGB (clamped, rounded)."""
    return Image.fromarray(to_uint8(tensor01.permute(1, 2, 0)))  # channels last: never ambiguous, even 3 px wide


def center_crop_box(width: int, height: int, ratio: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the largest centred crop whose aspect ratio (width / height) lies
    within ``ratio`` (a square by default): the one centre-crop computation (backbone input, figure panels,
    training crops, FID originals). Exact arithmetic (pass a ``Fraction`` for a ratio like 4/3), so the box
    never depends on float rounding."""
    low, high = Fraction(ratio[0]), Fraction(ratio[1])
    aspect = Fraction(width, height)
    if aspect < low:
        w, h = width, round(width / low)
    elif aspect > high:
        w, h = round(height * high), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def builtin_photos() -> list[tuple[str, Image.Image]]:
    """Real colour photographs that ship inside scikit-image and scikit-learn (offline).

    Raises a clear error when scikit-image is missing (it comes with the ``demo`` extra).
    """
    try:
        from skimage import data as skdata
    except ImportError:
        raise FeatinvError("scikit-image is not installed; install the demo extra: pip install 'featinv[demo]'") from None
    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
             "retina", "colorwheel", "logo"]
    photos: list[tuple[str, Image.Image]] = []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            array = loader()
        except Exception:  # some skimage datasets need pooch downloads; those are skipped offline
            continue
        if isinstance(array, tuple):
            array = array[0]
        if array.ndim != 3 or array.shape[2] < 3:
            continue
        photos.append((f"skimage.{name}", Image.fromarray(np.asarray(array[..., :3], dtype=np.uint8))))
    try:
        from sklearn.datasets import load_sample_images

        for filename, array in zip(load_sample_images().filenames, load_sample_images().images, strict=True):
            photos.append((f"sklearn.{Path(filename).stem}", Image.fromarray(array)))
    except Exception:  # scikit-learn always ships these; guard against a stripped install
        pass
    return photos
