"""Test-wide settings: offline, seeded, quiet."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# installed plugin packages must not leak into tests; tests that need entry points clear this explicitly
os.environ["FEATINV_DISABLE_PLUGIN_AUTOLOAD"] = "1"


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install plugin modules like pip would (a module plus a .dist-info with an entry point in group
    ``featinv``) into a temporary site folder on ``sys.path``, with autoload on; returns ``install(dist,
    module, body) -> site``. Subprocesses see the plugins with ``PYTHONPATH=site``."""
    import textwrap
    from pathlib import Path

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FEATINV_DISABLE_PLUGIN_AUTOLOAD", raising=False)

    def install(dist: str, module: str, body: str) -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(body))
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"  # as pip names it: one dash before the version
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[featinv]\n{module} = {module}\n")
        return site

    yield install
    from featinv import registry

    monkeypatch.undo()
    registry.reset()


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state, so results are deterministic."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are dominated by thread start-up; one torch thread is faster and immune to a busy machine.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
