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


def array_to01(array: np.ndarray) -> np.ndarray:
    """A numpy image as skimage/OpenCV/imageio give it -> float32 ``[H, W, 3]`` in [0, 1].

    Accepted: ``H×W`` or ``H×W×1`` grayscale (repeated to RGB), ``H×W×3`` RGB, ``H×W×4`` RGBA (alpha
    dropped, as Pillow's ``convert("RGB")`` does); uint8 (/255), uint16 (/65535), bool, or floats in
    [0, 1]. Anything else is one line naming the problem and the fix (OpenCV's BGR order cannot be told
    apart from RGB: convert it with ``cv2.cvtColor`` first).
    """
    if not isinstance(array, np.ndarray):
        raise FeatinvError(f"expected a numpy image, got {type(array).__name__}")
    shape = tuple(array.shape)
    if array.ndim == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        raise FeatinvError(f"numpy images must be channels-last H×W×C, got shape {shape}; "
                           "transpose it with array.transpose(1, 2, 0)")
    if array.ndim not in (2, 3) or (array.ndim == 3 and shape[-1] not in (1, 3, 4)):
        raise FeatinvError(f"numpy images must be H×W (gray), H×W×1, H×W×3 or H×W×4 (RGBA), got shape {shape}")
    if array.size == 0:
        raise FeatinvError(f"numpy image of shape {shape} is empty; pass an image with pixels")
    if array.ndim == 2:
        array = array[:, :, None]
    array = array[:, :, :3] if array.shape[-1] == 4 else array
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        values = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise FeatinvError("numpy image contains NaN or infinite values; pass finite floats in [0, 1]")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            hint = "divide by 255" if high > 1.0 and low >= 0.0 else "rescale it"
            raise FeatinvError(f"float numpy images must lie in [0, 1], got values in [{low:g}, {high:g}]; {hint} first")
    else:
        raise FeatinvError(f"numpy images must be uint8, uint16, bool or float in [0, 1], got dtype {array.dtype}; "
                           "cast with array.astype(np.uint8) or divide by 255 to get floats")
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.ascontiguousarray(values)


def image_to_tensor01(image: object):  # -> torch.Tensor
    """One image of any accepted kind -> float tensor ``[3, H, W]`` in [0, 1]: the one image↔tensor entry.

    A PIL image (any mode), a numpy array (see :func:`array_to01`), a ``[3, H, W]`` tensor (floats in
    [0, 1] or integers in 0..255) or a path to an image file.
    """
    import torch

    if isinstance(image, Image.Image):
        return to_tensor01(image)
    if isinstance(image, np.ndarray):
        return torch.from_numpy(array_to01(image)).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise FeatinvError(f"tensor images must be [3, H, W] (or a [B, 3, H, W] batch), got {list(image.shape)}")
        if not image.is_floating_point():
            return image.float() / 255.0
        if image.numel() and float(image.max()) > 1.5:
            raise FeatinvError("tensor images must be floats in [0, 1] (got values above 1); divide by 255 first")
        return image.float()
    if isinstance(image, (str, os.PathLike)):
        return to_tensor01(open_image(image))
    raise FeatinvError(f"cannot use {type(image).__name__} as an image; pass a PIL image, a numpy array "
                       "(H×W×C), a [3, H, W] tensor in [0, 1] or a file path")


def as_pil(image: object) -> Image.Image:
    """One in-memory image (PIL, numpy array or ``[3, H, W]`` tensor) -> PIL RGB.

    For APIs that keep PIL images (analyses, concept fitting, training sets): float numpy/tensor images
    are rounded to 8 bits here, as any saved PNG would be.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return to_pil(image_to_tensor01(image))


def is_image_object(value: object) -> bool:
    """Whether ``value`` is an in-memory image :func:`as_pil` takes (PIL, numpy array or a 3-D tensor)."""
    if isinstance(value, (Image.Image, np.ndarray)):
        return True
    import sys

    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported: never import it for this
    return torch is not None and isinstance(value, torch.Tensor) and value.ndim == 3


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
