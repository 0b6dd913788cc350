"""`featinv explore`: the explorer's panels equal the Python API's outputs, bad input is one clear message,
and results show themselves in notebooks (the page itself is tested over HTTP in test_explore_server.py)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from featinv.analyses.compose import Composition
from featinv.analyses.interpolation import Interpolation
from featinv.analyses.steering import Steering
from featinv.apps.explorer import Explorer, ExploreSettings
from featinv.data import to_uint8
from featinv.errors import FeatinvError
from tests.fixtures_model import make_tiny_model, make_tiny_photos

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ExploreSettings(steps=2, seeds=2)


def tiny_pooled_twin(model):
    """The same weights as a pooled run (a second model for the side-by-side panels, without retraining)."""
    from featinv.diffusion.model import FeatInv

    return FeatInv(model.backbone, model.base, model.controlnet, pooled=True, config=dict(model.config))


def tiny_concepts(model, photos):
    from featinv.concepts.base import create_decomposer, feature_vectors

    decomposer = create_decomposer("mcd", n_concepts=2).fit(feature_vectors(model.features(list(photos.values()))))
    info = model.backbone.info
    decomposer.meta = {"backbone": info.spec, "layer": info.layer}
    return decomposer


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    return make_tiny_model(tmp_path_factory.mktemp("explore"))


@pytest.fixture(scope="module")
def photos():
    return make_tiny_photos()


@pytest.fixture(scope="module")
def explorer(model, photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    for name, image in photos.items():
        image.save(folder / name)
    return Explorer([model, tiny_pooled_twin(model)], concepts=tiny_concepts(model, photos), images=folder,
                    settings=FAST)


def test_reconstruct_shows_each_run_and_equals_the_python_api(explorer, model, photos):
    image = explorer.example("noise.png")
    result = explorer.reconstruct(image, name="noise")
    direct = model.reconstruct(images=[image, image], seeds=[0, 1], steps=2, progress=False)
    assert [len(row) for row in result.rows] == [1, 2, 2]  # original, then 2 seeds from each of 2 runs
    for seed in range(2):
        assert np.array_equal(result.rows[1][seed][1], to_uint8(direct.images[seed]))
    assert "run0 seed 0, cos" in result.rows[1][0][0] and "run1 seed 1" in result.rows[2][1][0]
    assert sum("top-5" in note for note in result.notes) == 5
    assert result.seconds > 0 and not result.cached
    again = explorer.reconstruct(image, name="noise")
    assert again.cached and "cache" in again.timing()
    assert np.array_equal(again.rows[1][0][1], result.rows[1][0][1])


def test_one_more_seed_samples_only_the_new_seed(explorer, photos, monkeypatch):
    image = photos["ramp.png"]
    explorer.reconstruct(image, ExploreSettings(steps=2, seeds=1))
    calls = []
    for model in explorer.models.values():
        original = model.reconstruct
        monkeypatch.setattr(model, "reconstruct", lambda *a, _o=original, **k: calls.append(k["seeds"]) or _o(*a, **k))
    explorer.reconstruct(image, ExploreSettings(steps=2, seeds=2))
    assert calls == [[1], [1]]  # seed 0 of each run came from the cache


def test_steer_is_the_steering_analysis_per_concept(explorer, model, photos):
    image = photos["noise.png"]
    result = explorer.steer(image, [0.25, 1.0])
    sampling = FAST.sampling()
    direct = Steering(attenuate=0.25, n=2, progress=False, sampling=sampling).compute(
        model, [("noise", image)], decomposer=explorer.decomposer, concepts=[0])[0]
    assert len(result.rows) == 3  # original/Grad-CAM/reconstruction, then one row per concept
    assert [c for c, _ in result.rows[0]] == [c for c, _ in direct.display_rows()[0]]
    for (caption, pixels), (want_caption, want) in zip(result.rows[1], direct.display_rows()[1], strict=True):
        assert caption == want_caption and np.array_equal(pixels, want)
    assert "x0.25" in result.rows[1][2][0] and "x1" in result.rows[2][2][0]
    assert result.warnings == []


def test_a_concept_edit_after_reconstructing_samples_only_the_edited_maps(explorer, model, photos, monkeypatch):
    """The page's flow: Reconstruct, then move a slider. The unedited map is the image's own feature map bit for
    bit, so its samples come from the Reconstruct panel; the concepts left at 1 sample nothing; and the answer
    equals the Steering analysis run without any cache."""
    image = photos["ramp.png"]
    explorer.clear_cache()
    explorer.reconstruct(image, name="ramp")
    sampled: list[int] = []
    original = model.reconstruct
    monkeypatch.setattr(model, "reconstruct", lambda *a, **k: sampled.append(len(k["seeds"])) or original(*a, **k))
    result = explorer.steer(image, [0.25, 1.0], name="ramp")
    assert sampled == [2]  # concept 0 x0.25 for the 2 seeds, nothing else
    second = explorer.steer(image, [1.0, 0.5], name="ramp")
    assert sampled == [2, 2] and not second.cached  # the next edit again samples only its own maps
    monkeypatch.setattr(model, "reconstruct", original)
    direct = Steering(attenuate=0.25, n=2, progress=False, sampling=FAST.sampling()).compute(
        model, [("ramp", image)], decomposer=explorer.decomposer, concepts=[0])[0]
    for (caption, pixels), (want_caption, want) in zip(result.rows[1], direct.display_rows()[1], strict=True):
        assert caption == want_caption and np.array_equal(pixels, want)  # concept 0: map, mask, edit
    assert "0% changed" in result.rows[2][1][0]  # concept 1 at 1 changes nothing


def test_amplifying_a_concept_warns_in_the_result(explorer, photos):
    result = explorer.steer(photos["noise.png"], [2.0, 2.0])
    assert result.warnings and "out of distribution" not in result.warnings[0]  # the analysis's own wording
    assert any("never saw such maps" in w for w in result.warnings)


def test_compose_and_interpolate_are_the_analyses(explorer, model, photos):
    a, b = photos["noise.png"], photos["ramp.png"]
    sampling = FAST.sampling()
    composed = explorer.compose(a, b, "top-left", names=("noise", "ramp"))
    want = Composition(regions=["top-left"], progress=False, sampling=sampling).compute(
        model, [("noise", a)], others=[("ramp", b)])[0]
    assert np.array_equal(composed.rows[0][2][1], want.outlined(0))
    assert "cells" in composed.notes[0]
    cells = explorer.compose(a, b, "0,0,1,1")
    assert np.array_equal(cells.rows[0][2][1], want.outlined(0))  # top-left of a 2x2 grid is cell 0,0
    mixed = explorer.interpolate(a, b, 0.25, names=("noise", "ramp"))
    want = Interpolation(weights=[0.25], progress=False, sampling=sampling).compute(
        model, [("noise", a)], others=[("ramp", b)])[0]
    assert np.array_equal(mixed.rows[0][1][1], to_uint8(want.reconstructions[0]))
    assert mixed.title.startswith("25% noise")


def test_bad_input_is_one_clear_line(explorer, model, photos, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(FeatinvError, match="not a readable image"):
        explorer.open_upload(text)
    big = tmp_path / "big.png"
    photos["noise.png"].save(big)
    with pytest.raises(FeatinvError, match="over the 0 MB limit"):
        explorer.open_upload(big, limit=10)
    with pytest.raises(FeatinvError, match="choose an example or upload"):
        explorer.open_upload(None)
    with pytest.raises(FeatinvError, match="is not understood"):
        explorer.compose(photos["noise.png"], photos["ramp.png"], "somewhere")
    with pytest.raises(FeatinvError, match="no example image called"):
        explorer.example("../../etc/passwd")
    with pytest.raises(FeatinvError, match="spatial feature map"):
        explorer.compose(photos["noise.png"], photos["ramp.png"], "top-left", run="run1")
    with pytest.raises(FeatinvError, match="seeds must be"):
        ExploreSettings(seeds=0)
    with pytest.raises(FeatinvError, match="--concepts DIR"):
        Explorer([model]).steer(photos["noise.png"], [])
    with pytest.raises(FeatinvError, match="does not exist"):
        Explorer([tmp_path / "no-such-run"])


def test_export_is_one_self_contained_page(explorer, photos, tmp_path):
    explorer.reconstruct(photos["noise.png"])
    path = explorer.export(tmp_path / "session.html")
    page = path.read_text()
    assert page.count("data:image/png;base64,") == len(explorer.history)
    assert "http://" not in page and "https://" not in page  # opens offline
    assert "reconstruct:" in page and "took" in page
    with pytest.raises(FeatinvError, match="nothing to export"):
        Explorer([explorer.models["run0"]]).export(tmp_path / "empty.html")


# ------------------------------------------------------------------------------- notebook display


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_reconstruction_shows_itself_as_a_grid(model, photos):
    result = model.reconstruct(images=list(photos.values()), seeds=[3, 4], steps=2, progress=False)
    width, height = _png_size(result._repr_png_())
    assert width > 2 * 128 and height >= 128  # two cells side by side, small images enlarged
    page = result._repr_html_()
    assert page.count("data:image/png;base64,") == 2 and "seed 3 cos" in page and "seed 4" in page


def test_analysis_items_and_results_show_themselves(model, photos, explorer):
    from featinv.analyses.steering import steer_concepts

    result = steer_concepts(model, explorer.decomposer, photos["noise.png"], None, attenuate=0.25, n=1, steps=2,
                            progress=False)
    item = result.items[0]
    assert [len(row) for row in item.display_rows()] == [3, 3, 3]
    assert _png_size(item._repr_png_())[1] > 3 * 128
    assert "concept 1 x0.25" in result._repr_html_()
    composed = Composition(regions=["top-left", "full"], steps=2, progress=False).run(
        model, photos["noise.png"], others=photos["ramp.png"])
    assert [c for c, _ in composed.items[0].display_rows()[0]][2].startswith("B in top-left")
    assert composed._repr_html_().count("<img") == 6
    mixed = Interpolation(weights=[1, 0], steps=2, progress=False).run(model, photos["noise.png"],
                                                                      others=photos["ramp.png"])
    assert mixed._repr_png_().startswith(b"\x89PNG")
    assert explorer.history[0]._repr_html_().count("<img") >= 1


# ------------------------------------------------------------------------------------------ CLI


def test_explore_without_gradio_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    from featinv.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["explore", "--run", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "featinv[app]"' in err


def test_explore_with_a_bad_run_is_one_line_exit_2(capsys, tmp_path):
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        pytest.skip("the app extra (gradio) is not installed")
    from featinv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["explore", "--run", str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err


def test_demo_prints_the_explore_command():
    from pathlib import Path

    from featinv.cli.explore import explore_command

    line = explore_command([Path("out dir/featinv-unpooled"), Path("out dir/featinv-pooled")], Path("out dir/concepts"))
    assert line == ("featinv explore --run 'out dir/featinv-unpooled' --run 'out dir/featinv-pooled' "
                    "--concepts 'out dir/concepts'")
