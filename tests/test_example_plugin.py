"""The example third-party plugin package (examples/featinv-example-plugin), installed into a temporary
site folder through its entry points, registers one thing of every kind, and each works from the Python
API and from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import featinv
from featinv import registry
from tests.cli_run import exit_code
from tests.fixtures_model import make_tiny_images

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "featinv-example-plugin"
PACKAGE = "featinv-example-plugin"
CNN = ["--backbone", "example-cnn:small", "--weights", "none"]


def _entry_points() -> dict[str, str]:
    """The example's ``[project.entry-points.featinv]`` table (name -> module), as pip would install it."""
    section = (EXAMPLE / "pyproject.toml").read_text().split("[project.entry-points.featinv]\n")[1].split("\n[")[0]
    pairs = (line.split("=", 1) for line in section.splitlines() if "=" in line and not line.startswith("#"))
    return {name.strip(): target.strip().strip('"') for name, target in pairs}


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """Install the example like pip would: its package on sys.path plus a .dist-info with its entry points
    (read from its pyproject.toml), never into the shared environment. Yields a PYTHONPATH for subprocesses."""
    info = tmp_path / "featinv_example_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[featinv]\n" + "".join(f"{k} = {v}\n" for k, v in _entry_points().items()))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.DISABLE_AUTOLOAD_ENV, raising=False)
    registry.reset()
    yield os.pathsep.join([str(tmp_path), str(EXAMPLE), str(Path(__file__).resolve().parents[1])])
    monkeypatch.undo()
    registry.reset()


def _featinv(pythonpath: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    env.pop(registry.DISABLE_AUTOLOAD_ENV, None)
    return subprocess.run([sys.executable, "-m", "featinv", *args], env=env, capture_output=True, text=True, check=False)


@pytest.fixture
def images(tmp_path):
    return make_tiny_images(tmp_path / "images", count=3)


def test_every_kind_is_registered_by_the_package(installed_example):
    expected = {"backbones": "example-cnn", "bases": "example-tiny", "encoders": "example-linear",
                "decomposers": "pca", "analyses": "roundtrip"}
    listing = registry.plugin_listing()
    assert listing["errors"] == {}, listing["errors"]
    for kind, name in expected.items():
        entry = next(e for e in listing["registered"][kind] if e["name"] == name)
        assert entry["package"] == PACKAGE


def test_example_decomposer_via_create(installed_example):
    vectors = torch.randn(200, 12, dtype=torch.float64)
    decomposer = registry.create_decomposer("pca", n_concepts=3).fit(vectors)
    fmap = torch.randn(2, 12, 4, 4)
    parts = decomposer.decompose(fmap).parts
    assert parts.shape == (4, 2, 12, 4, 4)
    torch.testing.assert_close(parts.sum(0), fmap, atol=1e-5, rtol=1e-5)


def test_example_backbone_python_and_cli(installed_example, capsys):
    backbone = featinv.create_backbone("example-cnn:small", weights="none")
    assert backbone.features(torch.rand(1, 3, 32, 32)).shape == (1, 32, 4, 4)
    assert exit_code(["layers", "example-cnn:small", "--weights", "none"]) == 0
    assert "stages.1" in capsys.readouterr().out


def test_example_base_and_encoder_python(installed_example, tmp_path, images):
    from featinv.diffusion.model import FeatInv

    model = FeatInv.create("example-cnn:small", "example-tiny:16", encoder="example-linear", backbone_weights="none")
    assert type(model.controlnet.encoder).__name__ == "LinearEncoder"
    run = model.save_pretrained(tmp_path / "run")
    loaded = FeatInv.from_pretrained(run)
    assert loaded.base.spec == "example-tiny:16"
    torch.testing.assert_close(loaded.base.unet.conv_in.weight, model.base.unet.conv_in.weight)  # rebuilt alike
    assert loaded.reconstruct(images=torch.rand(1, 3, 32, 32), steps=1, progress=False).images.shape == (1, 3, 16, 16)


def test_example_backbone_base_and_encoder_train_from_the_cli(installed_example, tmp_path, images):
    from featinv.diffusion.model import FeatInv

    out = tmp_path / "cli_run"
    code = exit_code(["train", "--data", str(images), "--out", str(out), *CNN, "--base", "example-tiny:16",
                 "--encoder", "example-linear", "--cache-features", "--max-steps", "1", "--batch-size", "2",
                 "--num-workers", "0", "--val-steps", "1", "--quiet"])
    assert code == 0
    model = FeatInv.from_pretrained(out)
    assert model.config["backbone"]["spec"] == "example-cnn:small"
    assert type(model.controlnet.encoder).__name__ == "LinearEncoder"


def test_example_analysis_python(installed_example, tmp_path, images):
    from featinv.diffusion.model import FeatInv
    from tests.fixtures_model import perturb_controlnet

    model = FeatInv.create("example-cnn:small", "example-tiny:16", encoder="example-linear", backbone_weights="none")
    perturb_controlnet(model)
    result = featinv.create_analysis("roundtrip", steps=1, progress=False).run(model, images, tmp_path / "roundtrip")
    assert result.analysis == "roundtrip" and len(result.items) == 3
    summary = json.loads((tmp_path / "roundtrip" / "summary.json").read_text())
    assert summary["settings"] == {"steps": 1, "seed": 0}
    assert all(-1.0 <= numbers["cosine"] <= 1.0 for numbers in summary["images"].values())
    assert len(list((tmp_path / "roundtrip").glob("*.png"))) == 3


def test_example_analysis_cli(installed_example, tmp_path, images):
    from featinv.diffusion.model import FeatInv

    run = FeatInv.create("example-cnn:small", "example-tiny:16", encoder="example-linear",
                         backbone_weights="none").save_pretrained(tmp_path / "run")
    shown = _featinv(installed_example, "viz", "roundtrip", "--run", str(run), "--image", str(images),
                     "--out", str(tmp_path / "viz"), "--steps", "1", "--quiet")
    assert shown.returncode == 0, shown.stderr
    assert json.loads((tmp_path / "viz" / "summary.json").read_text())["analysis"] == "roundtrip"


def test_example_decomposer_and_command_from_the_cli(installed_example, tmp_path, images):
    concepts = tmp_path / "pca-concepts"
    code = exit_code(["concepts", "fit", *CNN, "--data", str(images), "--out", str(concepts), "--method", "pca",
                 "--n-concepts", "2", "--quiet"])
    assert code == 0
    listed = _featinv(installed_example, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["registered"]["decomposers"]
    assert {"name": "pca", "package": PACKAGE}.items() <= next(e for e in entries if e["name"] == "pca").items()
    shown = _featinv(installed_example, "pca-variance", "--concepts", str(concepts))
    assert shown.returncode == 0, shown.stderr
    assert "energy explained" in shown.stdout and "%" in shown.stdout


def test_docs_show_every_example_module_in_full():
    """The example is built only from docs/plugins.md: every module of it appears there verbatim."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    modules = sorted((EXAMPLE / "featinv_example").glob("*.py"))
    assert len(modules) == 7
    for module in modules:
        if module.name != "__init__.py":
            assert module.read_text().rstrip() in docs, f"{module.name} differs from docs/plugins.md"
    assert all(f'{name} = "{target}"' in docs for name, target in _entry_points().items())
