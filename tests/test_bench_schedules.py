"""The few-step quality benchmark still runs: one schedule scored on a tiny run, the table and the run lookup."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from tests.fixtures_model import make_tiny_run

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_schedules.py"
pytestmark = pytest.mark.usefixtures("one_thread")


def _load():
    spec = importlib.util.spec_from_file_location("bench_schedules", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schedules_are_scored_like_eval_and_tabled(tmp_path):
    from PIL import Image

    bench = _load()
    run = make_tiny_run(tmp_path)
    assert bench.find_run(run) == run
    with pytest.raises(SystemExit, match="no finished FeatInv run"):
        bench.find_run(tmp_path / "nothing")
    with pytest.raises(SystemExit, match="NAME:STEPS"):
        bench.parse_schedule("ddim")
    from featinv.diffusion.model import FeatInv

    model = FeatInv.from_pretrained(run)
    held = [(f"held/{i}", Image.new("RGB", (24, 24), (40 * i, 90, 200 - 30 * i))) for i in range(3)]
    args = argparse.Namespace(seed=0, guidance=None, batch_size=4, device="cpu")
    rows = [bench.score_schedule(model, held, name, 2, args) for name in ("ddim", "unipc")]
    for row in rows:
        assert row["n"] == 3 and row["seconds_per_image"] > 0 and -1 <= row["cosine"] <= 1
        assert row["pixel_mse"] is not None and row["fid_substitute"] is not None
    text = bench.table({"rows": rows})
    assert "| ddim:2 |" in text and "| unipc:2 |" in text and "1.00x" in text
