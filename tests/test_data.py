"""Image discovery: recursion, skipped files, empty and corrupt inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featinv.data import builtin_photos, find_images, open_image, try_open_image
from featinv.errors import FeatinvError


def _save(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def test_find_images_recursive_with_classes(tmp_path):
    _save(tmp_path / "n01" / "a.png")
    _save(tmp_path / "n02" / "sub" / "b.jpg")
    (tmp_path / "n02" / "notes.txt").write_text("x")
    listing = find_images(tmp_path)
    assert [p.name for p in listing.paths] == ["a.png", "b.jpg"]
    assert [p.name for p in listing.skipped] == ["notes.txt"]
    assert set(listing.classes()) == {"n01", "n02"}


def test_missing_empty_and_corrupt(tmp_path):
    with pytest.raises(FeatinvError, match="does not exist"):
        find_images(tmp_path / "nope")
    with pytest.raises(FeatinvError, match="no images found"):
        find_images(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert try_open_image(bad) is None
    with pytest.raises(FeatinvError, match="not a readable image"):
        open_image(bad)


def test_builtin_photos_are_real_colour_images():
    photos = builtin_photos()
    assert len(photos) >= 8
    assert all(img.mode == "RGB" and min(img.size) >= 256 for _, img in photos)


def test_center_crop_box_is_exact_for_ranges_and_fixed_aspects() -> None:
    from fractions import Fraction

    from featinv.data import center_crop_box

    assert center_crop_box(40, 20) == (10, 0, 30, 20)  # a square by default
    assert center_crop_box(20, 40) == (0, 10, 20, 30)
    assert center_crop_box(30, 20, (3 / 4, 4 / 3)) == (1, 0, 28, 20)  # 4/3 of 20 is 26.67 -> 27
    assert center_crop_box(21, 20, (3 / 4, 4 / 3)) == (0, 0, 21, 20)  # already within the range
    assert center_crop_box(300, 400, (Fraction(4, 3),) * 2) == (0, 87, 300, 312)


def test_to_uint8_and_to_pil_agree_and_accept_both_layouts() -> None:
    import numpy as np
    import torch

    from featinv.data import to_pil, to_uint8

    chw = torch.tensor([[[-0.5, 0.5, 1.5]], [[0.0, 1 / 255, 0.5 / 255]], [[1.0, 0.2, 0.7]]])  # [3, 1, 3]
    hwc = chw.permute(1, 2, 0)
    assert np.array_equal(to_uint8(hwc), np.asarray(to_pil(chw)))  # 3 px wide: to_pil is never ambiguous
    assert to_uint8(hwc)[0, :, 0].tolist() == [0, 128, 255]
    assert to_uint8(torch.rand(3, 4, 5)).shape == (4, 5, 3)
