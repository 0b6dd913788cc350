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
