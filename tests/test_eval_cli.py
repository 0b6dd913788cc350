"""`featinv eval` commands on tiny runs, and the class-prompt baseline on a tiny Stable Diffusion folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from featinv.cli import app, main
from featinv.features.imagenet import class_prompt, imagenet_classes
from tests.fixtures_model import make_tiny_images, make_tiny_run, make_tiny_sd

runner = CliRunner()


def _exit_code_and_stderr(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code), capsys.readouterr().err


def test_class_table_and_prompt() -> None:
    classes = imagenet_classes()
    assert len(classes) == 1000 and len({c.wnid for c in classes}) == 1000
    assert class_prompt(0) == "a high-quality, detailed, and professional image of a tench, which is a kind of cyprinid"
    assert classes[340].name == "zebra" and classes[340].wnid == "n02391049"
    assert all(c.name and c.superclass for c in classes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("cli_run"))


def test_eval_cli_runs_resumes_and_compares(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = tiny_run
    data = make_tiny_images(tmp_path / "ood", count=3)  # a flat folder: one class
    common = ["eval", "--run", str(run), "--data", str(data), "--steps", "1", "--fid", "backbone", "-q"]
    partial = runner.invoke(app, [*common, "--limit", "1"])
    assert partial.exit_code == 0, partial.output
    assert "partial" in partial.output
    result = runner.invoke(app, [*common, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["complete"] and summary["n_images"] == 3 and summary["classes"] == 1
    out = run / "eval" / "ood"
    assert (out / "metrics.md").is_file() and (out / "metrics.csv").is_file()

    shown = runner.invoke(app, ["eval", "compare", str(run), str(out)])
    assert shown.exit_code == 0, shown.output
    assert "FeatInv comparison" in shown.output and "not comparable to published FID" in shown.output
    listed = runner.invoke(app, ["eval", "compare", str(out), "--json"])
    assert [s["n_images"] for s in json.loads(listed.output)] == [3]
    assert "| Model | cosine-sim | top5(1) match | FID[" in (out / "metrics.md").read_text()

    code, err = _exit_code_and_stderr(["eval", "--run", str(run)], capsys)
    assert code == 2 and "needs --run DIR and --data DIR" in err
    code, err = _exit_code_and_stderr(["eval", "--run", str(run), "--data", str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err
    code, err = _exit_code_and_stderr([*common[:-3], "--fid", str(tmp_path / "pt_inception.pth"),
                                       "--out", str(tmp_path / "e2")], capsys)
    assert code == 2 and "Inception weights not found" in err and "FEATINV_INCEPTION_WEIGHTS" in err
    assert not (tmp_path / "e2" / "images").exists() or not any((tmp_path / "e2" / "images").iterdir())
    code, err = _exit_code_and_stderr(["eval", "compare", str(tmp_path / "ood")], capsys)
    assert code == 2 and "no metrics.json" in err


def test_eval_sweep_cli_writes_plot(tiny_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = make_tiny_images(tmp_path / "imgs", count=2)
    result = runner.invoke(app, ["eval", "sweep", "--run", str(tiny_run), "--data", str(data), "--guidance", "1,3",
                                 "--steps", "1", "--fid", "backbone", "--out", str(tmp_path / "sw"), "-q"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "sw" / "sweep.png").format == "PNG"
    numbers = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert numbers["guidance"] == [1.0, 3.0] and numbers["fid_label"].startswith("FID[")
    assert len(numbers["fid"]) == 2 and all(v is not None for v in numbers["cosine_distance"])
    assert (tmp_path / "sw" / "guidance-3" / "metrics.json").is_file()


def test_class_prompt_baseline_on_tiny_sd(tmp_path: Path, capsys) -> None:
    from featinv.evaluation.baseline import class_baseline, encode_prompts

    sd = make_tiny_sd(tmp_path)
    embeds = encode_prompts(f"sd:{sd}", ["tench", "zebra", "tench"])  # the tiny tokenizer keeps 8 characters
    assert embeds.shape == (3, 8, 16) and not embeds[0].equal(embeds[1]) and embeds[0].equal(embeds[2])

    out = tmp_path / "baseline"
    args = ["eval", "baseline", "--base", f"sd:{sd}", "--backbone", "timm:test_convnext", "--weights", "none",
            "--classes", "0,340", "--per-class", "2", "--steps", "2", "--out", str(out), "-q"]
    first = runner.invoke(app, [*args, "--limit", "3"])
    assert first.exit_code == 0, first.output
    assert len(json.loads((out / "index.json").read_text())["rows"]) == 3
    result = class_baseline(f"sd:{sd}", ["timm:test_convnext"], per_class=2, classes=[0, 340], out=out,
                            steps=2, weights=["none"], progress=False)
    summary = result.summary
    assert summary["complete"] and summary["n_images"] == 4 and summary["classes"] == 2
    scores = summary["backbones"]["timm:test_convnext"]
    assert 0.0 <= scores["top1"] <= scores["top5"] <= 1.0
    assert result.rows[2]["prompt"].endswith("a zebra, which is a kind of equine")
    assert "timm:test_convnext" in (out / "baseline.md").read_text()

    code, err = _exit_code_and_stderr(["eval", "baseline", "--base", f"pixel:{tmp_path}", "--backbone",
                                       "timm:tf_efficientnet_lite0", "--classes", "0"], capsys)
    assert code == 2 and "text-conditioned base" in err
    code, err = _exit_code_and_stderr(["eval", "baseline", "--base", f"sd:{sd}", "--backbone", "timm:tf_efficientnet_lite0",
                                       "--classes", "1000", "--out", str(tmp_path / "b2")], capsys)
    assert code == 2 and "0..999" in err
