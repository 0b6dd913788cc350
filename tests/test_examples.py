"""Every script in examples/ runs end to end on tiny models (a tiny saved run, a few small images)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.fixtures_model import make_tiny_images, make_tiny_pixel_base, make_tiny_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STEPS = "2"


def load_example(name: str):
    """Import examples/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"featinv_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the plugin example registers itself by module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    run = make_tiny_run(root)
    images = make_tiny_images(root / "images", count=2)
    return run, images


def test_every_example_is_tested() -> None:
    scripts = {p.stem for p in EXAMPLES.glob("*.py")}
    tested = {"reconstruct_folder", "steer_concept", "interpolate", "compose", "custom_backbone_plugin"}
    assert scripts == tested


def test_reconstruct_folder(tiny, tmp_path: Path, capsys) -> None:
    run, images = tiny
    out = tmp_path / "recon"
    rows = load_example("reconstruct_folder").main(
        ["--run", str(run), "--images", str(images), "--out", str(out), "--seeds", "0,1", "--steps", STEPS, "--quiet"])
    assert len(rows) == 4  # 2 images x 2 seeds
    assert sorted(p.name for p in out.glob("*.png")) == ["img0_s0.png", "img0_s1.png", "img1_s0.png", "img1_s1.png"]
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["items"]) == 4
    assert all(-1.0 <= row["cosine"] <= 1.0 for row in rows)
    assert "mean cosine" in capsys.readouterr().out


def test_steer_concept(tiny, tmp_path: Path) -> None:
    run, images = tiny
    out = tmp_path / "steer"
    result = load_example("steer_concept").main(
        ["--run", str(run), "--images", str(images / "img0.png"), "--fit-images", str(images), "--out", str(out),
         "--n-concepts", "2", "--pairs", "2", "--steps", STEPS, "--quiet"])
    assert (out / "concepts" / "config.json").is_file()  # fitted and saved for reuse
    assert (out / "summary.json").is_file()
    assert [p.name for p in result.figures] == ["img0.png"]
    numbers = result.summary["images"]["img0"]
    assert [c["concept"] for c in numbers["concepts"]] == [0, 1]
    # reuse the saved concepts for one concept only
    again = load_example("steer_concept").main(
        ["--run", str(run), "--images", str(images / "img0.png"), "--out", str(tmp_path / "again"),
         "--concepts", str(out / "concepts"), "--concept", "1", "--pairs", "2", "--steps", STEPS, "--quiet"])
    assert [c["concept"] for c in again.summary["images"]["img0"]["concepts"]] == [1]


def test_interpolate(tiny, tmp_path: Path) -> None:
    run, images = tiny
    out = tmp_path / "interp"
    result = load_example("interpolate").main(
        ["--run", str(run), "--image-a", str(images / "img0.png"), "--image-b", str(images / "img1.png"),
         "--out", str(out), "--weights", "1,0.5,0", "--steps", STEPS, "--quiet"])
    (item,) = result.summary["images"].values()
    assert [s["weight_a"] for s in item["steps"]] == [1.0, 0.5, 0.0]
    assert len(result.figures) == 1 and result.figures[0].is_file()


def test_compose(tiny, tmp_path: Path) -> None:
    run, images = tiny
    out = tmp_path / "compose"
    outcome = load_example("compose").main(
        ["--run", str(run), "--image-a", str(images / "img0.png"), "--image-b", str(images / "img1.png"),
         "--out", str(out), "--region", "top-left", "--region", "full", "--steps", STEPS, "--quiet"])
    (item,) = outcome["result"].summary["images"].values()
    assert [r["label"] for r in item["regions"]] == ["top-left", "full"]
    assert (out / "by_hand.png").is_file()
    # the hand-made composite is the analysis' composite: same map, same seed
    assert outcome["difference"] < 1e-3


def test_custom_backbone_plugin(tiny, tmp_path: Path) -> None:
    import featinv
    from featinv.registry import reset

    _, images = tiny
    base = make_tiny_pixel_base(tmp_path)
    module = load_example("custom_backbone_plugin")
    try:
        listing = module.main([])
        backbone = listing["backbone"]
        assert backbone.layer == "stages.1" and backbone.info.channels == 64 and backbone.info.grid == (8, 8)
        outcome = module.main(["--base", f"pixel:{base}", "--images", str(images), "--out", str(tmp_path / "run"),
                               "--train-steps", "2", "--batch-size", "2", "--steps", STEPS, "--device", "cpu",
                               "--quiet"])
        assert outcome["model"].backbone.spec == "smallcnn:base"
        assert len(outcome["reconstructions"]) == 2
        assert "smallcnn" in featinv.list_backbones()
        with pytest.raises(featinv.FeatinvError, match="no published weights"):
            featinv.backbone("smallcnn:base", weights="pretrained")
    finally:
        reset()  # leave the registry as the other tests expect it
    assert "smallcnn" not in featinv.list_backbones()


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_example_help(name: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_example(name).parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_docs_show_example_options_that_exist() -> None:
    """Every ``examples/NAME.py --option ...`` written in the docs parses with that script's own parser."""
    import re
    import shlex

    docs = Path(__file__).resolve().parents[1] / "docs"
    lines = []
    for page in docs.glob("*.md"):
        lines += re.findall(r"(examples/(\w+)\.py(?: [^`\n]*)?)", page.read_text())
    assert len(lines) >= 5
    for line, name in lines:
        tokens = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
        load_example(name).parse_args(tokens)  # argparse exits on an unknown option
