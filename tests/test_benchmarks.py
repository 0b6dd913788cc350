"""The benchmark scripts keep working: each runs its tiny CPU configuration briefly in a subprocess, the GPU
script's steps parse with the scripts' real argument parsers, and the helpers (peaks, FLOP counting,
summary) give the right numbers."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
H100 = "NVIDIA H100 80GB HBM3"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name in sys.modules and Path(getattr(sys.modules[name], "__file__", "")) == BENCH / f"{name}.py":
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _run(args: list[str], env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_bench_reconstruct_tiny_cpu(tmp_path):
    out = tmp_path / "r.jsonl"
    proc = _run([sys.executable, "benchmarks/bench_reconstruct.py", "--config", "tiny", "--device", "cpu",
                 "--batch-size", "2", "--schedules", "ddim:2", "dpm++:2", "--warmup", "1", "--repeats", "1",
                 "--threads", "1", "--jsonl", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report,) = _json_lines(proc.stdout)
    assert report["benchmark"] == "reconstruct" and report["config"] == "tiny"
    assert {"machine", "device", "settings", "arch", "flops", "results"} <= set(report)
    assert report["settings"]["cfg"] and report["settings"]["attention"] == "AttnProcessor2_0"
    assert set(report["results"]) == {"ddim:2", "dpm++:2"}
    for result in report["results"].values():
        assert result["images_per_s"] > 0 and result["tflop_per_image"] > 0 and result["achieved_tflops"] > 0
        assert "peak_fraction" not in result  # a CPU has no known peak
    ddim = report["results"]["ddim:2"]["tflop_per_image"]
    flops = report["flops"]
    assert ddim == pytest.approx(2 * flops["denoiser_call_per_image"] + flops["vae_decode_per_image"], rel=1e-3)
    assert _json_lines(out.read_text()) == [report]


def test_bench_memory_tiny_cpu(tmp_path):
    out = tmp_path / "m.jsonl"
    proc = _run([sys.executable, "benchmarks/bench_memory.py", "--counts", "2", "4", "--batch-size", "2",
                 "--jsonl", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = _json_lines(proc.stdout)
    assert [report["command"] for report in reports] == ["featinv reconstruct", "featinv eval"]
    for report in reports:
        assert report["benchmark"] == "memory" and [row["images"] for row in report["rows"]] == [2, 4]
        for row in report["rows"]:  # every image reconstructed by a real `featinv reconstruct` / `eval` process
            assert row["exit_code"] == 0 and row["written"] == row["images"] and row["peak_rss_mib"] > 50
        assert report["growth_mib"] == pytest.approx(report["rows"][1]["peak_rss_mib"]
                                                     - report["rows"][0]["peak_rss_mib"], abs=0.11)
        assert f"{report['command']}: peak RSS x{report['growth_ratio']}" in proc.stderr  # the growth is printed
    assert _json_lines(out.read_text()) == reports


def test_profile_tiny_cpu(tmp_path):
    out = tmp_path / "p.jsonl"
    proc = _run([sys.executable, "benchmarks/profile_gpu.py", "--config", "tiny", "--device", "cpu",
                 "--train-batches", "2", "--batch-size", "2", "--steps", "1", "--top", "3", "--threads", "1",
                 "--jsonl", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report,) = _json_lines(proc.stdout)
    assert report["benchmark"] == "profile" and report["settings"]["bf16"] is False
    assert list(report["train"]) == ["batch 2"] and list(report["denoiser"]) == ["fp32", "+ channels_last"]
    for result in [*report["train"].values(), *report["denoiser"].values()]:
        assert result["wall_s"] > 0 and result["host_self_s"] > 0 and len(result["top"]) == 3
        assert "kernel_busy_s" not in result  # no GPU: no kernel time to report
    assert report["train"]["batch 2"]["samples_per_s"] == pytest.approx(2 / report["train"]["batch 2"]["wall_s"], rel=1e-2)
    # each finished measurement is also reported at once on stderr (kept when a run is stopped at its limit)
    assert proc.stderr.count("# train batch 2:") == 1 and proc.stderr.count("# denoiser ") == 2
    assert _json_lines(out.read_text()) == [report]


def test_flops_tiny_meta_with_results(tmp_path):
    results = tmp_path / "runs.jsonl"
    train = {"benchmark": "train", "config": "tiny", "device": "cuda", "machine": {"gpu": H100},
             "settings": {"batch_size": 8, "mixed_precision": "bf16"},
             "results": {"ours": {"samples_per_s": 100.0}, "cache": {"samples_per_s": 200.0}}}
    other = {**train, "config": "minisd"}  # another architecture: not scored with tiny's FLOPs
    results.write_text(json.dumps(train) + "\n" + json.dumps(other) + "\nnot json\n")
    proc = _run([sys.executable, "benchmarks/flops.py", "--config", "tiny", "--batch-sizes", "2", "4",
                 "--schedules", "ddim:50", "--results", str(results)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report,) = _json_lines(proc.stdout)
    assert report["device"] == "meta"
    two, four = report["train_step"]["2"], report["train_step"]["4"]
    assert four["total_tflop"] == pytest.approx(2 * two["total_tflop"], rel=1e-3)  # linear in the batch
    assert two["backbone_tflop"] > 0 and two["per_sample_tflop"] > two["per_sample_without_backbone_tflop"]
    sampling = report["sampling"]
    assert sampling["denoiser_call_cfg_per_image_tflop"] == pytest.approx(2 * sampling["denoiser_call_per_image_tflop"],
                                                                          rel=1e-3)
    ours, cache = report["peak_fractions"]
    assert ours["what"] == "train ours batch 8 bf16" and cache["what"] == "train cache batch 8 bf16"
    assert ours["achieved_tflops"] == pytest.approx(100 * two["per_sample_tflop"], rel=1e-3)
    assert cache["achieved_tflops"] == pytest.approx(200 * two["per_sample_without_backbone_tflop"], rel=1e-3)
    assert ours["peak_fraction"] == pytest.approx(ours["achieved_tflops"] / 989.4, rel=1e-2)


class _Parsed(Exception):
    pass


def test_run_gpu_steps_parse_with_the_scripts_parsers(monkeypatch):
    proc = _run(["bash", "benchmarks/run_gpu.sh"], env={"BENCH_DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    steps = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert {"reconstruct-bf16", "train-b64-bf16", "train-b8-bf16", "train-b8-fp32", "train-b64-fp32", "flops"} <= set(steps)
    parsers = {"bench_reconstruct.py": _load("bench_reconstruct").build_parser(),
               "flops.py": _load("flops").build_parser(), "profile_gpu.py": _load("profile_gpu").build_parser()}
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    bench_train = _load("bench_train")
    for name, command in steps.items():
        _, script, *args = shlex.split(command)
        script = Path(script).name
        if script == "bench_train.py":
            monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
            with pytest.raises(_Parsed) as parsed:
                bench_train.main(args)
            monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
            ns = parsed.value.args[0]
            assert ns.config == "minisd" and ns.device == "cuda" and ns.images >= ns.batch_size, name
        else:
            ns = parsers[script].parse_args(args)
            assert ns.config == "minisd", name
    train = {n: shlex.split(c) for n, c in steps.items() if "bench_train" in c}
    assert any("64" in c and "bf16" in c for c in train.values()) and any("no" in c for c in train.values())


def test_run_gpu_budget_skips_steps_and_still_summarizes(tmp_path):
    env = {"OUT": str(tmp_path), "BENCH_CONFIG": "tiny", "BENCH_DEVICE": "cpu", "BENCH_BUDGET_S": "0",
           "PYTHON": sys.executable}
    proc = _run(["bash", "benchmarks/run_gpu.sh"], env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skip  reconstruct-bf16" in proc.stdout and "failed: none" in proc.stdout
    assert "not measured" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "gpu.jsonl").read_text() == ""


def test_card_peaks_and_fractions():
    common = _load("common")
    assert common.card_peak(H100, "bf16")["peak_tflops"] == 989.4
    assert common.card_peak("NVIDIA H100 PCIe", "bf16")["card"] == "H100 PCIe"
    assert common.card_peak("NVIDIA H200", "tf32")["peak_tflops"] == 494.7
    assert common.card_peak("NVIDIA L40S", "bf16")["card"] == "L40S"
    assert common.card_peak("NVIDIA GeForce GTX 1080", "bf16") is None and common.card_peak(None, "bf16") is None
    assert common.peak_fraction(494.7, H100, "bf16")["peak_fraction"] == 0.5
    assert "peak_fraction" not in common.peak_fraction(1.0, None, "bf16")
    assert common.sig(0.000123456) == 0.0001235


def test_attention_flops_counted_on_cpu_like_on_meta():
    common = _load("common")
    counts = []
    for device in ("cpu", "meta"):
        q = torch.randn(1, 2, 16, 8, device=device)
        counts.append(common.count_flops(lambda q=q: torch.nn.functional.scaled_dot_product_attention(q, q, q)))
    assert counts[0] == counts[1] == 4 * 1 * 2 * 16 * 16 * 8


def test_summarize_checks_targets():
    summarize = _load("summarize")
    train = {"benchmark": "train", "config": "minisd", "machine": {"gpu": H100},
             "settings": {"batch_size": 8, "mixed_precision": "bf16"},
             "results": {"ours": {"samples_per_s": 120.0, "peak_memory_gb": 13.5}}}
    rec = {"benchmark": "reconstruct", "config": "minisd", "machine": {"gpu": H100},
           "settings": {"batch_size": 64, "precision": "bf16", "cfg": True},
           "results": {"ddim:50": {"images_per_s": 7.5, "peak_memory_gb": 9.0, "achieved_tflops": 197.0,
                                   "peak_fraction": 0.199}}}
    text = summarize.markdown([train, rec])
    assert "| training, batch 8, bf16: >= 100 samples/s, peak <= 14 GB | 120 samples/s, peak 13.5 GB on " in text
    lines = {line.split(" | ")[0]: line for line in text.splitlines()}
    assert lines["| training, batch 8, bf16: >= 100 samples/s, peak <= 14 GB"].endswith("| yes |")
    assert lines["| reconstruction, DDIM-50 + CFG, batch 64, bf16: >= 8 images/s, peak <= 16 GB"].endswith("| no |")
    assert lines["| training, batch 64, bf16: >= 250 samples/s"].endswith("| not measured | - |")
    assert "19.9%" in text


def test_optimize_channels_last_keeps_outputs_and_compile_is_lazy():
    common = _load("common")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = common.build_model(common.ARCHS["tiny"], "cpu")
        features = torch.randn(2, model.backbone.info.channels, *model.backbone.info.grid,
                               generator=torch.Generator().manual_seed(0))
        keys = list(model.controlnet.state_dict())
        before = model.reconstruct(features=features, seeds=[1, 2], steps=2, progress=False).images
        model.optimize(channels_last=True)
        after = model.reconstruct(features=features, seeds=[1, 2], steps=2, progress=False).images
    finally:
        torch.set_num_threads(threads)
    assert model.base.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.optimizations["channels_last"] and not model.optimizations["compile"]
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    model.optimize(channels_last=False, compile=True)  # compiles lazily: nothing runs until the next call
    assert model.base.unet._compiled_call_impl is not None and model.controlnet._compiled_call_impl is not None
    assert list(model.controlnet.state_dict()) == keys


def test_flop_counts_on_meta_equal_counts_on_cpu():
    common, flops = _load("common"), _load("flops")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counted = [flops.sampling_flops(common.build_model(common.ARCHS["tiny"], device), 1.75) for device in ("cpu", "meta")]
    finally:
        torch.set_num_threads(threads)
    assert counted[0] == counted[1] and counted[0]["denoiser_call_per_image_tflop"] > 0
