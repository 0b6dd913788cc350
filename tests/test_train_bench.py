"""The training benchmark script still runs (tiny config, a couple of steps) and prints one JSON line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def test_bench_train_tiny_runs_all_modes(capsys):
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(["--config", "tiny", "--steps", "1", "--warmup", "1", "--images", "4", "--batch-size", "2",
                    "--threads", "1", "--num-workers", "1"])
    finally:
        torch.set_num_threads(threads)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert set(report["results"]) == {"ours", "cache", "naive"}
    assert all(r["samples_per_s"] > 0 for r in report["results"].values())
    assert {"machine", "device", "settings", "speedup_vs_naive"} <= set(report)
    # the cache build is timed apart from the steps; every mode ran with the same worker count
    assert report["results"]["cache"]["cache_build_s"] > 0 and report["settings"]["num_workers"] == 1
    assert all(r["setup_s"] >= 0 for name, r in report["results"].items() if name != "naive")
