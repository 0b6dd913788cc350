"""The demo's analyses name their inputs after the photographs the held-out crops come from (not "image0"),
and the name changes only labels and file names, never a number."""

from __future__ import annotations

import json

import pytest

from featinv.analyses.compose import compose
from featinv.apps.demo import _photo_named
from tests.fixtures_model import make_tiny_model, make_tiny_photos

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_held_out_crop_is_named_after_its_photograph():
    crop = object()
    assert _photo_named(("heldout/00-skimage.astronaut", crop)) == ("skimage.astronaut", crop)
    assert _photo_named(("heldout/13-sklearn.china.jpg", crop)) == ("sklearn.china.jpg", crop)
    assert _photo_named(("mine", crop)) == ("mine", crop)


def test_named_inputs_change_file_names_not_numbers(tmp_path):
    model = make_tiny_model(tmp_path / "model")
    a, b = make_tiny_photos()["noise.png"], make_tiny_photos()["ramp.png"]
    common = {"steps": 2, "seed": 0, "progress": False, "region": "top-left"}
    plain = compose(model, a, b, tmp_path / "plain", **common)
    named = compose(model, ("skimage.astronaut", a), ("skimage.camera", b), tmp_path / "named", **common)
    assert (tmp_path / "plain" / "image0__image0.png").is_file()
    assert (tmp_path / "named" / "skimage.astronaut__skimage.camera.png").is_file()
    numbers = json.loads((tmp_path / "named" / "skimage.astronaut__skimage.camera.json").read_text())
    assert numbers["image_a"] == "skimage.astronaut" and numbers["image_b"] == "skimage.camera"
    before = json.loads((tmp_path / "plain" / "image0__image0.json").read_text())
    strip = {"image", "image_a", "image_b"}
    assert {k: v for k, v in numbers.items() if k not in strip} == {k: v for k, v in before.items() if k not in strip}
    assert plain.items[0].composites.equal(named.items[0].composites)
