"""Achieved FLOP/s per device: the figures the dry runs turn FLOPs into time with (``featinv/resources/throughput.json``).

Two ways to get a record, both printing JSON (one record per line, the format of the packaged file):

``--derive`` (the default) re-derives the packaged records from the measured results in ``benchmarks/results``:
achieved FLOP/s = measured rate (samples/s or images/s) × FLOPs per sample or image, counted with
``featinv.diffusion.flops`` on the meta device for the very model each benchmark ran (the reconstruction
benchmarks recorded their achieved TFLOP/s themselves). ``--write FILE`` saves them (the packaged file is
written this way).

``--measure`` measures this machine: the chosen architecture (``--config``, random weights) runs ``--repeats``
training steps and guided denoiser calls at ``--batch-size`` on ``--device``; FLOPs counted the same way,
divided by the median wall time. Append the printed records to the packaged file to make the dry runs
estimate for this device.

Examples
  python benchmarks/bench_throughput.py                                   # re-derive the packaged records
  python benchmarks/bench_throughput.py --measure --config tiny --device cpu --threads 2
  python benchmarks/bench_throughput.py --measure --config minisd --device cuda --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (the benchmarks folder, put on sys.path just above)

RESULTS = common.REPO / "benchmarks" / "results"
TRAIN_CPU = RESULTS / "train-cpu-2026-12-02.jsonl"
RECONSTRUCT_CPU = RESULTS / "cpu-2026-11-26.jsonl"
GPU = RESULTS / "gpu-h200-2026-11-26" / "gpu.jsonl"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--measure", action="store_true", help="measure this machine instead of re-deriving")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None, help="save the records as a JSON list to this file")
    return parser


def _rel(path: Path) -> str:
    return str(path.relative_to(common.REPO))


def training_flops_per_sample(model: Any) -> int:
    """Backbone forward + loss forward/backward of one sample, counted on the meta device."""
    from featinv.diffusion.flops import on_meta, total, training_flops

    flops = total(training_flops(on_meta(model)))
    if flops is None:
        raise SystemExit("error: the training step could not be counted on the meta device")
    return flops


def _bench_train_tiny_model() -> Any:
    """``bench_train.py --config tiny``'s model: lite0 at 224 px + the 16 px pixel base, encoder width 8."""
    import bench_train

    from featinv.diffusion.model import FeatInv

    spec = bench_train.CONFIGS["tiny"]
    with tempfile.TemporaryDirectory() as folder:
        base = bench_train.make_base("pixel", "cpu", Path(folder))
    return FeatInv.create(spec["backbone"], base, encoder_kwargs=spec["encoder_kwargs"], backbone_weights="none",
                          input_size=spec["input_size"])


def _record(device: str, workload: str, precision: str, batch: int, rate: float, unit: str, flop_per_unit: float,
            source: str) -> dict[str, Any]:
    return {"device": device, "workload": workload, "precision": precision, "batch": batch,
            "flop_per_s": common.sig(rate * flop_per_unit), "rate": rate, "rate_unit": unit,
            "flop_per_unit": common.sig(flop_per_unit), "source": source}


def derive() -> list[dict[str, Any]]:
    """The packaged records, from the measured results (see the module docstring)."""
    records = []
    tiny = training_flops_per_sample(_bench_train_tiny_model())
    for line in common.read_jsonl(TRAIN_CPU):
        ours = line["results"]["ours"]
        records.append(_record("cpu", "train", "fp32", line["settings"]["batch_size"], ours["samples_per_s"],
                               "samples/s", tiny, f"{_rel(TRAIN_CPU)} (bench_train.py --config tiny, mode ours)"))
    for path, device in ((RECONSTRUCT_CPU, "cpu"), (GPU, "NVIDIA H200")):
        for line in common.read_jsonl(path):
            if line.get("benchmark") != "reconstruct":
                continue
            settings = line["settings"]
            for schedule, result in line["results"].items():
                records.append(_record(device, "sample", settings.get("precision", "fp32"), settings["batch_size"],
                                       result["images_per_s"], "images/s", result["tflop_per_image"] * 1e12,
                                       f"{_rel(path)} (bench_reconstruct.py --config {line['config']}, {schedule})"))
    minisd = training_flops_per_sample(common.build_model(common.ARCHS["minisd"], "meta"))
    for line in common.read_jsonl(GPU):
        if line.get("benchmark") == "train":
            settings = line["settings"]
            records.append(_record("NVIDIA H200", "train", settings["mixed_precision"].replace("no", "fp32"),
                                   settings["batch_size"], line["results"]["ours"]["samples_per_s"], "samples/s",
                                   minisd, f"{_rel(GPU)} (bench_train.py --config minisd, mode ours)"))
    return records


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """This machine's achieved FLOP/s for one training step and one guided denoiser call of ``--config``."""
    from featinv.diffusion.flops import count_flops

    arch = common.apply_common(args)
    model = common.build_model(arch, args.device, seed=args.seed)
    n = args.batch_size
    call = common.denoiser_call(model, n)
    model.controlnet.eval()
    with torch.inference_mode():
        sample_flops = count_flops(lambda: call(model.guidance_scale))
        call(model.guidance_scale)  # warm-up
        sample_s = statistics.median(common.timed(lambda: call(model.guidance_scale), args.device, args.repeats))
    info, res = model.backbone.info, model.base.resolution
    crops = torch.randn(n, 3, *info.input_size, device=args.device)
    targets = torch.rand(n, 3, res, res, device=args.device)
    generator = torch.Generator().manual_seed(args.seed)
    model.trainable_parameters()

    def step() -> None:
        feats = model.backbone.features(crops, pooled=model.pooled)
        model.training_loss(feats, targets, torch.zeros(n, dtype=torch.bool), generator).backward()

    train_flops = count_flops(step)
    step()  # warm-up
    train_s = statistics.median(common.timed(step, args.device, args.repeats))
    device = torch.cuda.get_device_name(0) if torch.device(args.device).type == "cuda" else torch.device(args.device).type
    source = f"bench_throughput.py --measure --config {arch.name} --batch-size {n} ({common.machine()['platform']})"
    return [_record(device, "train", "fp32", n, n / train_s, "samples/s", train_flops / n, source),
            _record(device, "sample", "fp32", n, n / sample_s, "denoiser calls/s", sample_flops / n, source)]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    records = measure(args) if args.measure else derive()
    for record in records:
        print(json.dumps(record), flush=True)
    if args.write is not None:
        from featinv.io import write_json

        write_json(args.write, {"about": "achieved FLOP/s per device and workload, re-derived by "
                                         "benchmarks/bench_throughput.py (see its docstring)", "records": records})
    return records


if __name__ == "__main__":
    main()
