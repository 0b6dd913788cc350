"""The example third-party plugin package is discovered through its entry point and works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featinv import registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "featinv-example-plugin"


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """Install the example like pip would: its package on sys.path plus a .dist-info with the entry point."""
    info = tmp_path / "featinv_example_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: featinv-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[featinv]\nexample = featinv_example\n")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.DISABLE_AUTOLOAD_ENV, raising=False)
    registry.reset()
    yield os.pathsep.join([str(tmp_path), str(EXAMPLE)])
    monkeypatch.undo()
    registry.reset()


def test_example_decomposer_via_create(installed_example):
    assert "pca" in registry.list_decomposers()
    assert registry.get_registry("decomposers").entries["pca"].package == "featinv-example-plugin"
    vectors = torch.randn(200, 12, dtype=torch.float64)
    decomposer = registry.create_decomposer("pca", n_concepts=3).fit(vectors)
    fmap = torch.randn(2, 12, 4, 4)
    parts = decomposer.decompose(fmap).parts
    assert parts.shape == (4, 2, 12, 4, 4)
    torch.testing.assert_close(parts.sum(0), fmap, atol=1e-5, rtol=1e-5)


def test_example_listed_and_command_works(installed_example, tmp_path):
    concepts = tmp_path / "pca-concepts"
    registry.create_decomposer("pca", n_concepts=2).fit(torch.randn(100, 6)).save(concepts)
    env = {**os.environ, "PYTHONPATH": installed_example}
    listed = subprocess.run([sys.executable, "-m", "featinv", "plugins", "--json"], env=env,
                            capture_output=True, text=True, check=True)
    entries = json.loads(listed.stdout)["registered"]["decomposers"]
    assert {"name": "pca", "package": "featinv-example-plugin"}.items() <= next(e for e in entries if e["name"] == "pca").items()
    shown = subprocess.run([sys.executable, "-m", "featinv", "pca-variance", "--concepts", str(concepts)], env=env,
                           capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "energy explained" in shown.stdout and "%" in shown.stdout
