"""Feature guidance on `eval` and the analyses, and the pixel checks reported next to every comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from featinv.analyses.base import SamplingOptions
from featinv.cli import app, main
from featinv.errors import FeatinvError
from featinv.evaluation import evaluate as evaluation
from featinv.evaluation import pixel_checks
from tests.fixtures_model import make_tiny_images, make_tiny_run

FAST = {"steps": 2, "batch_size": 4, "fid": "none", "progress": False}
runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("guided")
    run = make_tiny_run(root / "run")
    make_tiny_images(root / "data" / "cat", count=2)
    return run, root / "data"


def test_pixel_checks_on_known_images() -> None:
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert pixel_checks.pixel_mse(images, images).tolist() == [0.0, 0.0]
    assert torch.allclose(pixel_checks.pixel_mse(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)), torch.ones(1))
    assert torch.allclose(pixel_checks.ssim(images, images), torch.ones(2))
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert pixel_checks.high_frequency(flat).tolist() == [0.0]
    assert float(pixel_checks.high_frequency(images).min()) > 0
    rows = [{"pixel_mse": 0.1, "ssim": 0.5, "high_freq": 2.0, "high_freq_original": 1.0},
            {"pixel_mse": 0.3, "ssim": None, "high_freq": 2.0, "high_freq_original": 3.0}, {"cosine": 1.0}]
    summary = pixel_checks.summarise_pixel_checks(rows)
    assert summary["pixel_mse"] == pytest.approx(0.2) and summary["ssim"] == 0.5 and summary["n"] == 2
    assert summary["high_freq_ratio"] == pytest.approx(1.0)
    with pytest.raises(FeatinvError, match="differ in shape"):
        pixel_checks.pixel_mse(images, images[:, :, :8])


def test_guidance_warning_only_when_pixel_error_rises() -> None:
    unguided = {"cosine_sim": {"mean": 0.2}, "pixel_checks": {"pixel_mse": 0.05}}
    guided = {"feature_guidance": {"strength": 0.3}, "cosine_sim": {"mean": 0.8}, "pixel_checks": {"pixel_mse": 0.07}}
    assert "fooling the backbone" in pixel_checks.guidance_warning(guided, unguided)
    assert pixel_checks.guidance_warning(guided, None) is None
    assert pixel_checks.guidance_warning({**guided, "pixel_checks": {"pixel_mse": 0.04}}, unguided) is None
    assert pixel_checks.guidance_warning({**guided, "feature_guidance": None}, unguided) is None


def test_guided_evaluation_records_guidance_and_refuses_mixing(setup, tmp_path) -> None:
    run, data = setup
    plain = evaluation.evaluate(run, data, out=tmp_path / "plain", per_class=2, **FAST)
    assert plain.summary["feature_guidance"] is None
    assert {"fidelity", "pixel_mse", "ssim", "high_freq"} <= set(plain.rows[0])
    assert plain.summary["pixel_checks"]["n"] == 2 and "pixel MSE" in (tmp_path / "plain" / "metrics.md").read_text()

    guided = evaluation.evaluate(run, data, out=tmp_path / "guided", per_class=2, feature_guidance=0.5,
                                 unguided_summary=plain.summary, **FAST)
    assert guided.summary["feature_guidance"] == {"strength": 0.5, "schedule": "all", "normalize": "std"}
    assert all(-1.0 <= r["fidelity"] <= 1.0 for r in guided.rows)
    with pytest.raises(FeatinvError, match="other settings \\(feature_guidance\\)"):
        evaluation.evaluate(run, data, out=tmp_path / "plain", per_class=2, feature_guidance=0.5, **FAST)
    with pytest.raises(FeatinvError, match="other settings \\(feature_guidance\\)"):
        evaluation.evaluate(run, data, out=tmp_path / "guided", per_class=2, **FAST)


def test_an_index_from_before_guidance_still_resumes(setup, tmp_path, monkeypatch) -> None:
    run, data = setup
    evaluation.evaluate(run, data, out=tmp_path, per_class=2, **FAST)
    index = json.loads((tmp_path / "index.json").read_text())
    del index["settings"]["feature_guidance"]
    for row in index["rows"]:  # an older row: no pixel checks either
        for key in ("fidelity", "pixel_mse", "ssim", "high_freq", "high_freq_original"):
            row.pop(key)
    (tmp_path / "index.json").write_text(json.dumps(index))
    from featinv.diffusion.model import FeatInv

    monkeypatch.setattr(FeatInv, "reconstruct", lambda *a, **k: pytest.fail("finished rows were redone"))
    again = evaluation.evaluate(run, data, out=tmp_path, per_class=2, **FAST)
    assert again.summary["n_images"] == 2 and "pixel_checks" not in again.summary


def test_sampling_options_record_guidance_only_when_on() -> None:
    assert "feature_guidance" not in SamplingOptions().settings()
    guided = SamplingOptions(feature_guidance=0.1)
    assert guided.settings()["feature_guidance"] == {"strength": 0.1, "schedule": "all", "normalize": "std"}
    assert guided.reconstruct_kwargs()["feature_guidance"].strength == 0.1
    with pytest.raises(FeatinvError, match="strength"):
        SamplingOptions(feature_guidance=-1)


def test_viz_with_guidance_records_it(setup, tmp_path) -> None:
    run, data = setup
    out = tmp_path / "interp"
    result = runner.invoke(app, ["viz", "interpolation", "--run", str(run), "--image-a", str(data / "cat" / "img0.png"),
                                 "--image-b", str(data / "cat" / "img1.png"), "--weights", "1,0", "--steps", "2",
                                 "--feature-guidance", "0.2", "--guidance-schedule", "first:1", "--out", str(out),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    numbers = json.loads((out / "img0__img1.json").read_text())
    assert numbers["settings"]["feature_guidance"] == {"strength": 0.2, "schedule": "first:1", "normalize": "std"}


@pytest.mark.parametrize("command", [["viz", "interpolation", "--image-a", "a.png", "--image-b", "b.png"],
                                     ["eval", "--data", "d"], ["eval", "sweep", "--data", "d"],
                                     ["reconstruct", "--images", "a.png", "--out", "o"]])
@pytest.mark.parametrize("flag, value, message", [("--feature-guidance", "-1", "strength"),
                                                  ("--guidance-schedule", "middle", "schedule"),
                                                  ("--guidance-normalize", "l2", "normalisation")])
def test_bad_guidance_options_are_one_line(setup, capsys, tmp_path, command, flag, value, message) -> None:
    run, _ = setup
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--run", str(run), flag, value, "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_cli_with_guidance_has_its_own_default_folder(setup) -> None:
    run, data = setup
    result = runner.invoke(app, ["eval", "--run", str(run), "--data", str(data), "--per-class", "1", "--steps", "2",
                                 "--fid", "none", "--feature-guidance", "0.2", "--guidance-normalize", "none",
                                 "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "eval" / f"{data.name}-fg0.2" / "metrics.json").read_text())
    assert saved["summary"]["feature_guidance"] == {"strength": 0.2, "schedule": "all", "normalize": "none"}
    assert "pixel_checks" in saved["summary"]
