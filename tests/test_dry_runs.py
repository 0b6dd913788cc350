"""``featinv eval|reconstruct --dry-run`` and the FLOP and time estimates of every dry run.

The dry runs must write nothing (the directory tree is compared before and after), read no weights (the run
is rebuilt with random ones) and print the resolved values; FLOPs are counted on the meta device and turned
into time only from a recorded benchmark of the same device kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featinv import throughput
from featinv.diffusion import flops
from featinv.diffusion.plan import flop_rows
from tests.cli_run import exit_code
from tests.fixtures_model import make_tiny_images, make_tiny_model, make_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> set[tuple[str, int]]:
    return {(str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dry_run_assets")
    run = make_tiny_run(root)
    for label in ("cat", "dog"):
        make_tiny_images(root / "data" / label, count=3, size=24)
    return root, run


def test_eval_and_reconstruct_dry_runs_write_nothing_and_print_the_plan(assets, capsys, monkeypatch) -> None:
    from featinv.console import console

    monkeypatch.setattr(console, "width", 200)  # one line per row, so the values can be looked up whole
    root, run = assets
    before = _tree(root)
    code = exit_code(["eval", "--run", str(run), "--data", str(root / "data"), "--per-class", "2", "--seeds", "0,1",
                 "--steps", "4", "--guidance", "2", "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "4 from 2 class(es)" in text and "cat: 2, dog: 2" in text   # the per-class selection
    assert "reconstructions" in text and "8" in text                   # 4 originals x 2 seeds
    assert "1280×2×2" in text and "timm:tf_efficientnet_lite0" in text  # lite0 at 64 px
    assert "4 × denoiser call" in text and "estimated FLOPs" in text and "estimated time" in text
    out = root / "recon"
    code = exit_code(["reconstruct", "--run", str(run), "--images", str(root / "data"), "--out", str(out),
                 "--seeds", "0,1,2", "--scheduler", "dpm++", "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "6 found" in text and "18 (outputs" in text and "dpm++" in text and "not created" in text
    assert "50 × denoiser call" in text and "1.75 (the run's default)" in text
    assert _tree(root) == before  # no output folder, lock or index


def test_dry_run_api_and_a_bad_scheduler(assets) -> None:
    import featinv
    from featinv.errors import FeatinvError

    root, run = assets
    rows = dict(featinv.reconstruction_plan(run, root / "data" / "cat", root / "out", steps=2))
    assert rows["reconstructions"].startswith("3 ") and rows["steps"] == "2"
    with pytest.raises(FeatinvError):
        featinv.evaluation_plan(run, root / "data", scheduler="nope")
    assert not (root / "out").exists()


def test_flops_are_counted_per_module_and_guidance_doubles_the_denoiser(tmp_path) -> None:
    model = flops.on_meta(make_tiny_model(tmp_path))
    guided = {c.what.split(" (")[0]: c for c in flops.sample_flops(model, 2.0)}
    plain = {c.what.split(" (")[0]: c for c in flops.sample_flops(model, 1.0)}
    assert guided["denoiser call"].flops == 2 * plain["denoiser call"].flops > 0
    assert guided["backbone forward"].flops > 0 and guided["VAE decode"].flops == 0  # a pixel base has no VAE
    train = flops.training_flops(model)
    assert [c.what.split(" ")[0] for c in train] == ["backbone", "loss"] and all(c.flops for c in train)
    broken = [flops.FlopCount("backbone forward", 10), flops.FlopCount("VAE decode", None, "could not be counted")]
    rows = dict(flop_rows(broken, {}, 5, "image", "cpu", "sample", "fp32", 1))
    assert "not counted: could not be counted" in rows["FLOPs per image"]
    assert rows["estimated time"].startswith("no estimate")


def test_time_comes_only_from_a_recorded_benchmark_of_this_device(monkeypatch) -> None:
    cpu_train = [r for r in throughput.records() if r["device"] == "cpu" and r["workload"] == "train"]
    estimate = throughput.estimate_time(2 * cpu_train[0]["flop_per_s"], "cpu", "train", "fp32", 8)
    assert estimate.seconds == pytest.approx(2.0) and "train-cpu-2026-12-02.jsonl" in estimate.text
    h200 = throughput.records()
    monkeypatch.setattr(throughput, "device_kind", lambda device: "NVIDIA H200")
    bf16 = throughput.estimate_time(1e15, "cuda", "sample", "bf16", 64)
    assert bf16.seconds == pytest.approx(1e15 / 163.1e12, rel=0.01)  # the median of the two bf16 records
    assert {r["device"] for r in h200} >= {"cpu", "NVIDIA H200"}
    monkeypatch.setattr(throughput, "device_kind", lambda device: "Imaginary GPU")
    missing = throughput.estimate_time(1e12, "cuda", "train")
    assert missing.seconds is None and missing.text == "no recorded benchmark for Imaginary GPU"


def test_recorded_throughput_matches_the_measured_results_it_cites() -> None:
    """Each record is rate × FLOPs per unit, and the rate is the one in the results file it names
    (``python benchmarks/bench_throughput.py`` re-derives them all, counting the FLOPs again)."""
    for record in throughput.records():
        path = REPO / record["source"].split(" (")[0]
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        rates = [result.get("samples_per_s", result.get("images_per_s")) for line in lines
                 for result in line.get("results", {}).values() if isinstance(result, dict)]
        assert record["rate"] in rates, record
        assert record["flop_per_s"] == pytest.approx(record["rate"] * record["flop_per_unit"], rel=1e-3)
