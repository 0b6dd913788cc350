"""Reconstruction throughput: images/s of ``FeatInv.reconstruct`` (denoising + VAE decode), peak memory,
FLOPs per image and the fraction of the card's peak.

Prints ONE JSON line: machine (with the card), settings, and per schedule (``ddim:50``, ``dpm++:20``, ...)
the median seconds per batch, images/s, peak memory and TFLOP/s. Random feature maps of the backbone's
shape stand in for real ones (the cost does not depend on their values); classifier-free guidance runs
both branches as one batched call (``featinv.diffusion.sampler.guided_prediction``).

Timing: per schedule, ``--warmup`` untimed calls on the full batch with 2 steps (kernel selection, cuDNN
autotuning, ``--compile``'s compilation: their seconds are reported as ``warmup_s``), then ``--repeats``
timed calls with the full step count; the median is reported.

Examples
  python benchmarks/bench_reconstruct.py --config tiny --batch-size 4 --schedules ddim:10 dpm++:5
  python benchmarks/bench_reconstruct.py --config minisd --device cuda --batch-size 64 --precision bf16
  python benchmarks/bench_reconstruct.py --config minisd --device cuda --precision bf16 --channels-last --compile
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (the benchmarks folder, put on sys.path just above)


def parse_schedule(text: str) -> tuple[str, int]:
    """``name:steps`` (e.g. ``ddim:50``, ``dpm++:20``) -> (name, steps)."""
    name, _, steps = text.rpartition(":")
    if not name or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"schedule {text!r} is not NAME:STEPS, e.g. ddim:50 or dpm++:20")
    return name, int(steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="images per call (default: 64 minisd, 4 tiny)")
    parser.add_argument("--schedules", type=parse_schedule, nargs="+", default=[("ddim", 50), ("dpm++", 20)],
                        metavar="NAME:STEPS", help="sampler:steps to time (default: ddim:50 dpm++:20)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's, 1.75)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                        help="bf16 autocast of the denoiser (CUDA only) or fp32 (default: bf16 on CUDA, fp32 else)")
    parser.add_argument("--sampling-defaults", action="store_true",
                        help="FeatInv.sampling_defaults(): what reconstruct/eval/analyses get on CUDA (NHWC + a bf16 "
                        "denoiser); also reports the batch that fits the free GPU memory")
    parser.add_argument("--channels-last", action="store_true", help="FeatInv.optimize(channels_last=True)")
    parser.add_argument("--compile", action="store_true", help="FeatInv.optimize(compile=True): UNet + ControlNet")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false", help="fp32 without TF32 on GPUs")
    parser.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                        help="do not let cuDNN autotune convolutions")
    parser.add_argument("--warmup", type=int, default=1, help="untimed 2-step calls per schedule")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per schedule (median reported)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    arch = common.apply_common(args)
    device = torch.device(args.device)
    batch = args.batch_size or arch.batch_size
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if batch < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("error: --batch-size and --repeats must be >= 1, --warmup >= 0")

    start = time.perf_counter()
    model = common.build_model(arch, device, seed=args.seed)
    build_s = time.perf_counter() - start
    info = model.backbone.info
    gen = torch.Generator().manual_seed(args.seed)
    features = torch.randn(batch, info.channels, *info.grid, generator=gen)
    guidance = model.guidance_scale if args.guidance is None else args.guidance
    bf16 = precision == "bf16"
    seeds = list(range(batch))
    flops = denoiser_flops(model, guidance, bf16, min(batch, 2))  # before compiling: counted eagerly
    fitting = None
    if args.sampling_defaults:
        model.sampling_defaults()
        if device.type == "cuda":
            from featinv.diffusion.memory import fitting_batch_size

            fitting = fitting_batch_size(model, 4096, guidance)
    if args.channels_last or args.compile:
        model.optimize(channels_last=args.channels_last or model.optimizations["channels_last"], compile=args.compile,
                       compile_mode=args.compile_mode)

    def run(name: str, steps: int) -> Any:
        return model.reconstruct(features=features, seeds=seeds, guidance_scale=guidance, steps=steps,
                                 scheduler=name, batch_size=batch, progress=False, bf16=bf16)

    machine = common.machine()
    unit = common.gpu_precision(precision, device) if device.type == "cuda" else "fp32"  # bf16 autocast: CUDA only
    results: dict[str, Any] = {}
    for name, steps in args.schedules:
        warm = time.perf_counter()
        for _ in range(args.warmup):
            run(name, min(steps, 2))
        common.synchronize(device)
        warmup_s = time.perf_counter() - warm
        common.reset_peak_memory(device)
        stats = common.summarize(common.timed(lambda: run(name, steps), device, args.repeats))  # noqa: B023
        per_image_tflop = (steps * flops["denoiser_call_per_image"] + flops["vae_decode_per_image"]) / 1e12
        images_per_s = batch / stats["median_s"]
        results[f"{name}:{steps}"] = {
            "images_per_s": round(images_per_s, 3), "s_per_batch": stats, "warmup_s": round(warmup_s, 2),
            **common.peak_memory(device), "tflop_per_image": common.sig(per_image_tflop),
            **common.peak_fraction(per_image_tflop * images_per_s, machine.get("gpu"), unit),
        }
    report = {
        "benchmark": "reconstruct", "machine": machine, "device": str(device), "config": arch.name,
        "settings": {"batch_size": batch, "guidance": guidance, "cfg": guidance != 1.0, "precision": precision,
                     "math_unit": unit, "sampling_defaults": args.sampling_defaults,
                     "fitting_batch_size": fitting, "channels_last": args.channels_last, "compile": args.compile,
                     "compile_mode": args.compile_mode, "tf32": args.tf32 if device.type == "cuda" else None,
                     "cudnn_benchmark": args.cudnn_benchmark if device.type == "cuda" else None,
                     "warmup": args.warmup, "repeats": args.repeats, "seed": args.seed,
                     "attention": attention_kind(model), "vae_decode_chunk": 4},
        "arch": common.arch_summary(arch), "build_s": round(build_s, 2),
        "flops": {k: common.sig(v / 1e12) for k, v in flops.items()}, "flops_unit": "TFLOP", "results": results,
    }
    return common.emit(report, args.jsonl)


def denoiser_flops(model: Any, guidance: float, bf16: bool, n: int) -> dict[str, float]:
    """FLOPs per image of one denoiser call (CFG: both branches, one batched call) and of the VAE decode,
    counted on ``n`` images of the real model (FLOPs are linear in the batch)."""
    call_with = common.denoiser_call(model, n)
    latents = common.random_latents(model, n)
    device = model.device

    def call() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            call_with(guidance)

    with torch.inference_mode():
        return {"denoiser_call_per_image": common.count_flops(call) / n,
                "vae_decode_per_image": common.count_flops(lambda: model.base.decode(latents)) / n}


def attention_kind(model: Any) -> str:
    """The UNet's attention processor class(es): AttnProcessor2_0 means PyTorch SDPA (flash/efficient kernels)."""
    return ",".join(sorted({type(p).__name__ for p in model.base.unet.attn_processors.values()}))


if __name__ == "__main__":
    main()
