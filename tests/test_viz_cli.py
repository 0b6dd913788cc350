"""`featinv viz steering|interpolation|compose` (and the old names concept|interpolate) end to end on a saved tiny run, plus one-line input errors."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from torch import Tensor
from typer.testing import CliRunner

import featinv
from featinv.analyses.base import Analysis, as_images, as_model, reconstruct
from featinv.analyses.figures import image_panel, new_figure, to_uint8
from featinv.cli import app, main
from tests.fixtures_model import make_tiny_images, make_tiny_run

runner = CliRunner()
FAST = ["--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved run, a folder of two images and concepts fitted on the run's backbone layer, saved."""
    from featinv.concepts.base import create_decomposer, feature_vectors
    from featinv.diffusion.model import FeatInv

    root = tmp_path_factory.mktemp("viz")
    run = make_tiny_run(root)
    images = make_tiny_images(root / "images", count=2, size=40)
    model = FeatInv.from_pretrained(run)
    from featinv.data import load_images

    fmap = model.features([img for _, img in load_images([images])])
    decomposer = create_decomposer("mcd", n_concepts=2).fit(feature_vectors(fmap))
    decomposer.meta = {"backbone": model.backbone.info.spec, "layer": model.backbone.info.layer}
    concepts = decomposer.save(root / "concepts")
    return root, run, images, concepts


@pytest.mark.parametrize("command", ["steering", "concept"])
def test_viz_steering(setup, command):
    root, run, images, concepts = setup
    out = root / f"out-{command}"
    result = runner.invoke(app, ["viz", command, "--run", str(run), "--concepts", str(concepts), "--image",
                                 str(images), "--concept", "all", "--n", "2", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".featinv.lock", "img0.json", "img0.png", "img1.json", "img1.png",
                                                     "summary.json"]  # the lock file of the output folder stays
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["attenuate"] == 0.25 and summary["settings"]["n"] == 2
    assert [c["concept"] for c in summary["images"]["img0"]["concepts"]] == [0, 1]
    assert "summary.json" in result.output


@pytest.mark.parametrize("command", ["interpolation", "interpolate"])
def test_viz_interpolation(setup, command):
    root, run, images, _ = setup
    out = root / f"out-{command}"
    result = runner.invoke(app, ["viz", command, "--run", str(run), "--image-a", str(images / "img0.png"),
                                 "--image-b", str(images / "img1.png"), "--weights", "1,.5,0", "--out", str(out),
                                 *FAST])
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "img0__img1.json").read_text())
    assert [s["weight_a"] for s in numbers["steps"]] == [1.0, 0.5, 0.0]
    assert (out / "img0__img1.png").is_file()


def test_viz_compose(setup):
    root, run, images, _ = setup
    out = root / "out-compose"
    result = runner.invoke(app, ["viz", "compose", "--run", str(run), "--image-a", str(images / "img0.png"),
                                 "--image-b", str(images / "img1.png"), "--region", "top-left", "--region",
                                 "0,0,1,2", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "img0__img1.json").read_text())
    assert [r["label"] for r in numbers["regions"]] == ["top-left", "0,0,1,2"]
    assert (out / "img0__img1.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["compose", "--image-a", "a.png", "--image-b", "b.png", "--region", "diagonal"], "region 'diagonal'"),
    (["interpolate", "--image-a", "a.png", "--image-b", "b.png", "--weights", "1,2"], "weight"),
    (["concept", "--concepts", "c", "--image", "a.png", "--attenuate", "-1"], "attenuate"),
    (["concept", "--concepts", "c", "--image", "a.png", "--n", "0"], "n must be a positive integer"),
])
def test_bad_input_is_one_line(setup, capsys, args, message):
    _, run, _, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        main(["viz", args[0], "--run", str(run), *args[1:], "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_concepts_for_other_channels_are_refused(setup, capsys, tmp_path):
    import torch

    from featinv.concepts.base import create_decomposer

    _, run, images, _ = setup
    other = create_decomposer("mcd", n_concepts=2).fit(torch.randn(32, 8)).save(tmp_path / "c8")
    with pytest.raises(SystemExit) as exit_info:
        main(["viz", "concept", "--run", str(run), "--concepts", str(other), "--image", str(images), "--quiet"])
    assert exit_info.value.code == 2
    assert "8" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::featinv.analyses.shift.FeatureShiftWarning")
def test_training_norms_stored_with_the_run_are_the_reference(setup):
    root, run, images, _ = setup
    norms = run / "feature_norms.json"
    norms.write_text(json.dumps({"quantiles": [0.0, 0.01, 0.02]}))  # far below any real norm
    try:
        out = root / "out-norms"
        result = runner.invoke(app, ["viz", "interpolate", "--run", str(run), "--image-a", str(images / "img0.png"),
                                     "--image-b", str(images / "img1.png"), "--weights", "1", "--out", str(out),
                                     *FAST])
        assert result.exit_code == 0, result.output
        assert "warning:" in result.output
        check = json.loads((out / "summary.json").read_text())["images"]["img0__img1"]["steps"][0]["norm_check"]
        assert check["reference"].startswith("training") and check["out_of_distribution"]
    finally:
        norms.unlink()


# ------------------------------------------------------------- a third-party analysis runs from the CLI


@dataclass
class BrightnessItem:
    name: str
    image: Tensor
    brightness: float

    def numbers(self) -> dict:
        return {"image": self.name, "brightness": self.brightness}


class Brightness(Analysis):
    """What a plugin package would write: an Analysis subclass with one option of its own."""

    name = "brightness"

    def __init__(self, scale: float = 1.0, **common) -> None:
        super().__init__(**common)
        self.scale = float(scale)

    def settings(self) -> dict:
        return {"scale": self.scale, **self.sampling.settings()}

    def compute(self, model, images, **inputs) -> list[BrightnessItem]:
        model = as_model(model)
        items = []
        for item in as_images(images):
            fmap = model.features([item.image]) * self.scale
            image = reconstruct(model, fmap, [self.sampling.seed], self.sampling, self.progress)[0]
            items.append(BrightnessItem(item.name, image, float(image.mean())))
        return items

    def figure(self, item: BrightnessItem):
        fig, axes = new_figure(1, 1)
        image_panel(axes[0, 0], to_uint8(item.image), item.name, f"{item.brightness:.2f}")
        return fig


class BrightnessPlugin:
    """The plugin object: registers the analysis exactly as an installed package's entry point would."""

    @featinv.hookimpl
    def register_analyses(self, register) -> None:
        register("brightness", Brightness, description="mean brightness of a scaled map's reconstruction")


@pytest.fixture()
def third_party():
    from featinv import registry

    registry.reset(extra_plugins=(BrightnessPlugin(),))
    try:
        yield
    finally:
        registry.reset()


def test_a_plugin_analysis_runs_from_the_cli(setup, third_party):
    root, run, images, _ = setup
    listing = runner.invoke(app, ["viz", "--help"], env={"COLUMNS": "200"})
    assert "brightness" in listing.output and "mean brightness" in listing.output
    out = root / "out-plugin"
    result = runner.invoke(app, ["viz", "brightness", "--run", str(run), "--image", str(images), "--option",
                                 "scale=0.5", "--seed", "3", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".featinv.lock", "img0.json", "img0.png", "img1.json", "img1.png",
                                                     "summary.json"]  # the lock file of the output folder stays
    summary = json.loads((out / "summary.json").read_text())
    assert summary["analysis"] == "brightness"
    assert summary["settings"] == {"scale": 0.5, "seed": 3, "steps": 2, "guidance_scale": None, "scheduler": "ddim"}
    assert 0.0 <= json.loads((out / "img1.json").read_text())["brightness"] <= 1.0


def test_a_plugin_analysis_with_a_bad_option_is_one_line(setup, third_party, capsys):
    _, run, images, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        main(["viz", "brightness", "--run", str(run), "--image", str(images), "--option", "sclae=2", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "sclae" in err and "Traceback" not in err


def test_an_unknown_analysis_is_a_usage_error(setup):
    _, run, images, _ = setup
    result = runner.invoke(app, ["viz", "no-such-analysis", "--run", str(run), "--image", str(images)])
    assert result.exit_code == 2 and "no-such-analysis" in result.output
