"""Analyses on a tiny FeatInv model: FeatInv-Viz, interpolation, composition (the acceptance checks)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from featinv.analyses.base import as_images
from featinv.analyses.compose import Composition, Region, compose, outline_width, parse_region
from featinv.analyses.figures import YELLOW, draw_box_outline, to_uint8
from featinv.analyses.interpolation import Interpolation, interpolate, parse_weights
from featinv.analyses.shift import FeatureShiftWarning, check_feature_norms, reference_norms
from featinv.analyses.steering import Steering, parse_concepts, steer_concepts
from featinv.errors import FeatinvError
from tests.fixtures_model import make_tiny_model, make_tiny_photos

FAST = {"steps": 2, "progress": False}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    return make_tiny_model(tmp_path_factory.mktemp("analyses"))


@pytest.fixture(scope="module")
def photos():
    return list(make_tiny_photos().items())


@pytest.fixture(scope="module")
def decomposer(model, photos):
    from featinv.concepts.base import create_decomposer, feature_vectors

    fmap = model.features([img for _, img in photos])
    dec = create_decomposer("mcd", n_concepts=2).fit(feature_vectors(fmap))
    info = model.backbone.info
    dec.meta = {"backbone": info.spec, "layer": info.layer}
    return dec


# ---------------------------------------------------------------------------------------- FeatInv-Viz


def test_attenuate_one_gives_all_zero_difference(model, decomposer, photos):
    result = steer_concepts(model, decomposer, photos[0], None, attenuate=1.0, n=2, gradcam=False, **FAST)
    item = result.items[0]
    assert item.difference.shape[0] == 2
    assert torch.count_nonzero(item.difference) == 0
    assert not item.masks.any()
    assert result.warnings == []


def test_steering_writes_figure_per_image_with_numbers(model, decomposer, photos, tmp_path):
    result = steer_concepts(model, decomposer, photos, tmp_path / "viz", concepts="0,1", n=2, **FAST)
    assert [p.name for p in result.figures] == ["noise.png", "ramp.png"]
    for item, figure in zip(result.items, result.figures, strict=True):
        assert Image.open(figure).size[0] > 100
        numbers = json.loads(figure.with_suffix(".json").read_text())
        assert numbers["analysis"] == "steering" and numbers["settings"]["attenuate"] == 0.25
        assert [c["concept"] for c in numbers["concepts"]] == [0, 1]
        for k, concept in enumerate(numbers["concepts"]):
            assert concept["difference_max"] == pytest.approx(float(item.difference[k].max()))
            assert concept["mask_fraction"] == pytest.approx(float(item.masks[k].float().mean()))
            assert concept["difference_max"] > 0  # attenuation changes the reconstruction
        # normalised maps peak at 1, the mask is the 0.33 threshold, Grad-CAM and the coarse map are in [0, 1]
        assert torch.allclose(item.normalised.flatten(1).amax(1), torch.ones(2))
        assert torch.equal(item.masks, item.normalised >= 0.33)
        assert item.gradcam is not None and float(item.gradcam.min()) >= 0 and float(item.gradcam.max()) <= 1
        assert item.concept_maps.shape == item.difference.shape
    summary = json.loads((tmp_path / "viz" / "summary.json").read_text())
    assert set(summary["images"]) == {"noise", "ramp"} and summary["model"]["channels"] == model.backbone.info.channels


def test_difference_is_median_of_pairwise_distances(model, decomposer, photos):
    """Algorithm 1 by hand for one concept: same seeds, Euclidean RGB distance, median over pairs."""
    viz = Steering(attenuate=0.0, n=3, gradcam=False, **FAST)
    item = viz.compute(model, photos[0], decomposer=decomposer, concepts=1)[0]
    fmap = model.features([photos[0][1]])
    parts = decomposer.decompose(fmap)
    maps = torch.cat([parts.total()] * 3 + [parts.edited(1, 0.0)] * 3)
    images = model.reconstruct(features=maps, seeds=[0, 1, 2] * 2, steps=2, progress=False).images
    distance = (images[:3] - images[3:]).pow(2).sum(1).sqrt()
    torch.testing.assert_close(item.difference[0], distance.median(0).values, atol=1e-4, rtol=0)


def test_amplification_is_flagged_out_of_distribution(model, decomposer, photos, tmp_path):
    with pytest.warns(FeatureShiftWarning, match="largest feature norm"):
        result = steer_concepts(model, decomposer, photos[0], tmp_path, attenuate=5.0, n=1, gradcam=False, **FAST)
    assert result.warnings and "attenuate <= 1" in result.warnings[0]
    numbers = json.loads(result.summary_path.read_text())
    checks = [c["norm_check"] for c in numbers["images"]["noise"]["concepts"]]
    assert any(c["out_of_distribution"] and c["norm_ratio"] > 1.1 for c in checks)
    assert numbers["warnings"] == result.warnings


def test_norm_check_against_reference():
    fmap = torch.randn(1, 8, 4, 4)
    reference, name = reference_norms(object(), fmap)
    assert "original" in name and reference.numel() == 16
    same = check_feature_norms(fmap, reference, name)
    assert same.norm_ratio == pytest.approx(1.0) and not same.out_of_distribution and same.max_percentile == 100
    big = check_feature_norms(fmap * 3, reference, name)
    assert big.out_of_distribution and big.norm_ratio == pytest.approx(3.0) and big.fraction_above > 0.5

    class Stored:
        config = {"feature_norms": {"quantiles": [1.0, 2.0, 50.0]}}

    reference, name = reference_norms(Stored(), fmap)
    assert "training" in name and float(reference[-1]) == 50.0


@pytest.mark.parametrize("kwargs, match", [
    ({"attenuate": -0.5}, "attenuate"),
    ({"n": 0}, "n must be a positive integer"),
    ({"threshold": 1.5}, "threshold"),
])
def test_steering_rejects_bad_options(kwargs, match):
    with pytest.raises(FeatinvError, match=match):
        Steering(**kwargs)


def test_concept_selection():
    assert parse_concepts("all", 3) == [0, 1, 2]
    assert parse_concepts("2,0", 3) == [2, 0]
    assert parse_concepts(1, 3) == [1]
    for bad in ("3", "x", ""):
        with pytest.raises(FeatinvError):
            parse_concepts(bad, 3)


def test_concepts_for_another_backbone_are_refused(model, photos):
    from featinv.concepts.base import create_decomposer

    other = create_decomposer("mcd", n_concepts=2).fit(torch.randn(64, 16))
    with pytest.raises(FeatinvError, match="16"):
        steer_concepts(model, other, photos[0], None, n=1, **FAST)
    with pytest.raises(FeatinvError, match="refit"):
        steer_concepts(model, other, photos[0], None, n=1, **FAST)


def test_concepts_from_another_layer_are_refused(model, decomposer, photos):
    meta = decomposer.meta
    decomposer.meta = {"backbone": "timm:resnet50", "layer": "layer4"}
    try:
        with pytest.raises(FeatinvError, match="timm:resnet50 layer layer4.*refit"):
            steer_concepts(model, decomposer, photos[0], None, n=1, **FAST)
    finally:
        decomposer.meta = meta


# -------------------------------------------------------------------------------------- interpolation


def test_interpolation_weight_one_reproduces_a(model, photos, tmp_path):
    result = interpolate(model, photos[0], photos[1], tmp_path, weights=[1, 0.5, 0], seed=3, **FAST)
    item = result.items[0]
    fa, fb = model.features([photos[0][1], photos[1][1]]).split(1)
    alone_a = model.reconstruct(features=fa, seeds=[3], steps=2, progress=False).images[0]
    alone_b = model.reconstruct(features=fb, seeds=[3], steps=2, progress=False).images[0]
    # the same map and seed give the same image; batched BLAS may differ in the last float bits
    torch.testing.assert_close(item.reconstructions[0], alone_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(item.reconstructions[2], alone_b, atol=1e-5, rtol=0)
    assert (item.reconstructions[1] - alone_a).abs().max() > 1e-3  # the mix is a different image
    numbers = json.loads((tmp_path / "noise__ramp.json").read_text())
    assert [s["weight_a"] for s in numbers["steps"]] == [1, 0.5, 0]
    assert [s["cosine_weighted"] for s in numbers["steps"]] == pytest.approx(item.cosine)
    assert all(-1 <= c <= 1 for c in item.cosine)
    assert (tmp_path / "noise__ramp.png").is_file()


@pytest.mark.parametrize("weights", ["1,1.5", "-0.1", "", "a,b", [0.5, float("nan")]])
def test_interpolation_rejects_bad_weights(weights):
    with pytest.raises(FeatinvError, match="weight"):
        Interpolation(weights=weights)


def test_weights_parse():
    assert parse_weights("1,.75,0") == [1.0, 0.75, 0.0]


# ---------------------------------------------------------------------------------------- composition


def test_empty_region_reproduces_a_and_full_gives_b(model, photos):
    item = Composition(regions=["0,0,0,0", "full"], seed=1, **FAST).compute(model, photos[0], others=photos[1])[0]
    assert item.regions[0].empty
    assert torch.equal(item.composites[0], item.reconstruction_a)
    assert torch.equal(item.composites[1], item.reconstruction_b)
    fa = model.features([photos[0][1], photos[1][1]])[:1]
    alone = model.reconstruct(features=fa, seeds=[1], steps=2, progress=False).images[0]
    torch.testing.assert_close(item.composites[0], alone, atol=1e-5, rtol=0)
    assert item.numbers()["regions"][0]["empty"] is True


def test_region_outline_sits_on_the_region(model, photos, tmp_path):
    result = compose(model, photos[0], photos[1], tmp_path, region=["top-left", "1,0,2,2"], **FAST)
    item = result.items[0]
    grid = item.grid
    size = item.composites.shape[-1]
    for index in range(len(item.regions)):
        outlined = item.outlined(index)
        x0, y0, x1, y1 = item.regions[index].pixels(size, size, grid)
        yellow = np.all(outlined == np.array(YELLOW, dtype=np.uint8), axis=-1)
        border = np.zeros_like(yellow)
        border[y0:y1, x0:x1] = True
        width = outline_width(size)
        border[y0 + width:y1 - width, x0 + width:x1 - width] = False
        assert yellow[border].all()                          # the whole frame is yellow
        raw = to_uint8(item.composites[index])
        assert np.array_equal(outlined[~border], raw[~border])   # nothing drawn outside the frame
    # top-left on an even grid = the top-left quarter of the image
    assert grid[0] % 2 == 0 and grid[1] % 2 == 0
    assert item.regions[0].pixels(size, size, grid) == (0, 0, size // 2, size // 2)
    numbers = json.loads((tmp_path / "noise__ramp.json").read_text())
    assert [r["label"] for r in numbers["regions"]] == ["top-left", "1,0,2,2"]
    assert [r["cosine_composed"] for r in numbers["regions"]] == pytest.approx(item.cosine)
    # the saved figure carries the yellow outline too
    png = np.asarray(Image.open(tmp_path / "noise__ramp.png").convert("RGB")).astype(int)
    near_yellow = (png[..., 0] > 200) & (png[..., 1] > 200) & (png[..., 2] < 80)
    assert near_yellow.sum() > 10


def test_parse_region():
    grid = (4, 8)  # h, w
    assert parse_region("top-left", grid) == Region("top-left", 0, 0, 4, 2)
    assert parse_region("center", grid) == Region("center", 2, 1, 6, 3)
    assert parse_region("bottom-right", grid) == Region("bottom-right", 4, 2, 8, 4)
    assert parse_region("1,0,3,2", grid) == Region("1,0,3,2", 1, 0, 3, 2)
    assert parse_region("0.5,0.5,1.0,1.0", grid) == Region("0.5,0.5,1.0,1.0", 4, 2, 8, 4)
    assert parse_region((0, 0, 8, 4), grid).x1 == 8
    assert parse_region("0,0,0,0", grid).empty
    assert parse_region("0.1,0.1,0.12,0.12", grid).x1 - parse_region("0.1,0.1,0.12,0.12", grid).x0 == 1
    assert parse_region("0.5,0.5,1.0,1.0", grid).pixels(16, 16, grid) == (8, 8, 16, 16)


@pytest.mark.parametrize("text, match", [
    ("middle-ish", "not understood"),
    ("1,2,3", "not understood"),
    ("0,0,9,2", "leaves the 4x8 feature grid"),
    ("2,0,1,2", "x0 > x1"),
    ("0.5,0,1.5,1", "outside"),
    ("a,b,c,d", "not understood"),
])
def test_bad_regions_are_refused(text, match):
    with pytest.raises(FeatinvError, match=match):
        parse_region(text, (4, 8))


def test_composition_validates_before_running():
    with pytest.raises(FeatinvError, match="not understood"):
        Composition(regions="upper-ish")
    with pytest.raises(FeatinvError, match="no region"):
        Composition(regions=[])


def test_outline_helper_marks_only_the_frame():
    canvas = np.zeros((10, 10, 3), np.uint8)
    out = draw_box_outline(canvas, (2, 3, 7, 9), width=1)
    yellow = np.all(out == YELLOW, axis=-1)
    assert yellow[3, 2:7].all() and yellow[8, 2:7].all() and yellow[3:9, 2].all() and yellow[3:9, 6].all()
    assert yellow.sum() == 2 * 5 + 2 * 4 and not yellow[5, 4]
    assert not canvas.any()  # the input is not modified


# -------------------------------------------------------------------------------------------- plumbing


def test_registry_builds_the_analyses():
    from featinv.registry import create_analysis, list_analyses

    assert {"steering", "interpolation", "compose"} <= set(list_analyses())
    assert isinstance(create_analysis("steering", n=2), Steering)
    assert create_analysis("compose", regions="center").regions == ["center"]


def test_sampling_options_are_one_object_and_the_old_keywords_still_work():
    from featinv.analyses.base import SamplingOptions

    sampling = SamplingOptions(seed=3, steps=2, scheduler="unipc")
    assert Interpolation(sampling=sampling).sampling is sampling
    old = Composition(regions="center", seed=3, steps=2, scheduler="unipc", progress=False)
    assert old.sampling == sampling and old.settings()["steps"] == 2
    assert Steering(sampling=sampling, steps=4).sampling.steps == 4  # a keyword overrides the object's field
    assert SamplingOptions(bf16=True).settings()["bf16"] is True and "bf16" not in sampling.settings()
    with pytest.raises(FeatinvError, match="steps must be a positive integer"):
        SamplingOptions(steps=0)
    with pytest.raises(FeatinvError, match="seed"):
        SamplingOptions(seed=1.5)
    with pytest.raises(FeatinvError, match="unknown option 'stepz'"):
        Interpolation(stepz=2)


def test_old_class_name_still_works_with_a_deprecation_warning():
    import featinv.analyses.steering as steering_module

    with pytest.warns(DeprecationWarning, match="Steering"):
        assert steering_module.FeatInvViz is Steering
    assert Steering.name == "steering"


def test_images_from_paths_and_objects(tmp_path, photos):
    photos[0][1].save(tmp_path / "a b.png")
    items = as_images([tmp_path / "a b.png", photos[1][1], photos[1][1]])
    assert [i.name for i in items] == ["a_b", "image1", "image2"]
    assert [i.name for i in as_images((photos[0][1], photos[1][1]))] == ["image0", "image1"]
    assert [i.name for i in as_images(("cat.jpg", photos[1][1]))] == ["cat"]
    with pytest.raises(FeatinvError):
        as_images([42])
    with pytest.raises(FeatinvError):
        as_images(tmp_path / "missing.png")


def test_pooled_run_cannot_compose(model, photos):
    model.pooled = True
    try:
        with pytest.raises(FeatinvError, match="pooled"):
            Composition(**FAST).compute(model, photos[0], others=photos[1])
    finally:
        model.pooled = False


def test_no_warning_for_in_distribution_edits(model, photos):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureShiftWarning)
        Interpolation(weights=[0.5], **FAST).compute(model, photos[0], others=photos[1])
