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


def test_symlinked_class_folders_are_followed_once_and_loops_stop(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    _save(data / "n01" / "a.png")
    _save(elsewhere / "n02" / "b.png")
    (data / "n02").symlink_to(elsewhere / "n02", target_is_directory=True)
    (elsewhere / "n02" / "loop").symlink_to(elsewhere / "n02", target_is_directory=True)  # a link loop
    listing = find_images(data)
    assert [str(p.relative_to(data)) for p in listing.paths] == ["n01/a.png", "n02/b.png"]
    assert set(listing.classes()) == {"n01", "n02"}


def test_fifo_named_like_an_image_is_skipped_not_read(tmp_path):
    import os

    _save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")  # reading it would block for ever
    listing = find_images(tmp_path)
    assert [p.name for p in listing.paths] == ["a.png"] and [p.name for p in listing.skipped] == ["b.png"]
    assert try_open_image(tmp_path / "b.png") is None
    with pytest.raises(FeatinvError, match="not a regular file"):
        open_image(tmp_path / "b.png")


def test_16_bit_and_float_images_keep_their_brightness(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")  # 16-bit grayscale PNG
    Image.fromarray(ramp.astype(np.float32), mode="F").save(tmp_path / "float.tif")
    for name in ("deep.png", "float.tif"):
        pixels = np.asarray(open_image(tmp_path / name), dtype=np.float64)
        assert pixels.shape == (64, 64, 3)
        assert abs(pixels.mean() - 127.5) < 2, (name, pixels.mean())  # not clipped to white or black
        assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255


def test_decoded_size_is_bounded_with_a_clear_message(tmp_path, monkeypatch):
    _save(tmp_path / "big.png")  # 16x16 = 256 pixels
    monkeypatch.setenv("FEATINV_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(FeatinvError, match=r"16x16 pixels, over the 100-pixel bound \(set FEATINV_MAX_IMAGE_PIXELS"):
        open_image(tmp_path / "big.png")
    assert try_open_image(tmp_path / "big.png") is None
    monkeypatch.delenv("FEATINV_MAX_IMAGE_PIXELS")
    assert open_image(tmp_path / "big.png").size == (16, 16)


def test_excluded_output_folder_inside_the_inputs_is_not_reingested(tmp_path):
    _save(tmp_path / "a.png")
    _save(tmp_path / "out" / "a_s0.png")
    assert [p.name for p in find_images(tmp_path, exclude=[tmp_path / "out"]).paths] == ["a.png"]


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
