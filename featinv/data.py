"""Images in: folders (recursive, ImageNet layout works), single files, and photos shipped with packages."""

from __future__ import annotations

import os
import stat
import warnings
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


def _walk(root: Path, recursive: bool) -> list[Path]:
    """Every non-hidden entry under ``root``; symlinked folders are followed once (a link loop is not)."""
    entries: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:  # reached again through a link: a loop or a duplicate
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        entries += [Path(folder) / name for name in files if not name.startswith(".")]
    return sorted(entries)


def find_images(path: str | os.PathLike[str], recursive: bool = True,
                exclude: Iterable[str | os.PathLike[str]] = ()) -> ImageList:
    """List image files (by extension) in a folder, or the single image file given.

    Non-image files, and FIFOs or devices named like images (reading one would block for ever), are
    counted in ``skipped``; symlinked subfolders are followed once; anything under ``exclude`` (e.g. the
    command's own output folder inside the input folder) is left out. A missing or image-less folder is
    refused clearly.
    """
    root = Path(path)
    if not root.exists():
        raise FeatinvError(f"data path {root} does not exist; pass an image file or a folder of images")
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            raise FeatinvError(f"{root} is not an image file ({root.suffix or 'no extension'}); pass a .png/.jpg image")
        return ImageList(root.parent, [root])
    if not root.is_dir():
        raise FeatinvError(f"data path {root} is neither a regular file nor a folder; pass an image file or a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise FeatinvError(f"data folder {root} is not readable; fix its permissions or pass another folder")
    excluded = [Path(e).resolve() for e in exclude]
    found: list[Path] = []
    skipped: list[Path] = []
    for candidate in _walk(root, recursive):
        if any(candidate.resolve().is_relative_to(e) for e in excluded):
            continue
        image_like = candidate.suffix.lower() in IMAGE_EXTENSIONS and candidate.is_file()
        (found if image_like else skipped).append(candidate)
    if not found:
        raise FeatinvError(f"no images found in {root} ({len(skipped)} other files); pass a folder containing .png/.jpg images")
    return ImageList(root, found, skipped)


#: decoded-size bound: a small file can hold a huge image (a 100-megapixel PNG of 291 KB decodes to GBs)
MAX_PIXELS_ENV = "FEATINV_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000


def max_image_pixels() -> int:
    """The largest image (width x height) featinv decodes; ``FEATINV_MAX_IMAGE_PIXELS`` raises it."""
    value = os.environ.get(MAX_PIXELS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_PIXELS


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with 16-bit and float images scaled into 8 bits (Pillow's convert would clip them white/black)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0 if img.mode.startswith("I;16") or (values.size and values.max() > 255) else 1.0
        gray = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return img.convert("RGB")


def _open_rgb(path: str | os.PathLike[str]) -> Image.Image | str:
    """An RGB image, or the reason it cannot be one (one phrase, for skip lists and errors)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "not a regular file (a FIFO or device would block reading)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bound below is ours
            with Image.open(path) as img:
                if img.width * img.height > max_image_pixels():
                    return (f"{img.width}x{img.height} pixels, over the {max_image_pixels():,}-pixel bound "
                            f"(set {MAX_PIXELS_ENV} to allow it)")
                img.load()
                return _to_rgb(img)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return "corrupt, truncated or another format"


def try_open_image(path: str | os.PathLike[str]) -> Image.Image | None:
    """Open an image as RGB, or None when the file is corrupt, truncated, too large or not an image."""
    img = _open_rgb(path)
    return img if isinstance(img, Image.Image) else None


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image as RGB or fail with one line naming the file."""
    if not Path(path).exists():
        raise FeatinvError(f"image {path} does not exist; check the path")
    img = _open_rgb(path)
    if not isinstance(img, Image.Image):
        raise FeatinvError(f"{path} is not a readable image ({img}); replace or remove it")
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
