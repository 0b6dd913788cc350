"""Where the time goes: one model build, then (a) a training step profiled at two batch sizes and (b) one
guided denoiser call under three precision/layout variants. Prints ONE JSON line.

Why: the throughput benchmarks say *how fast*; this says *what limits it*. A step whose GPU kernels are
busy for much less than its wall time is bound by the host (Python + kernel launches: fix with CUDA graphs /
``torch.compile``); a step whose kernels fill it is bound by the kernels (fix with layouts, fusion, lower
precision). The denoiser variants show what bf16 weights (instead of bf16 autocast over fp32 weights) and
channels_last buy for sampling, without a full DDIM run each.

Examples
  python benchmarks/profile_gpu.py --config tiny --device cpu
  python benchmarks/profile_gpu.py --config minisd --device cuda --train-batches 8 64 --batch-size 64
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser)
    parser.add_argument("--train-batches", type=int, nargs="*", default=[8, 64], help="Training batch sizes to profile.")
    parser.add_argument("--batch-size", type=int, default=None, help="Images per denoiser call (CFG doubles it).")
    parser.add_argument("--steps", type=int, default=5, help="Profiled steps / calls per measurement.")
    parser.add_argument("--top", type=int, default=8, help="Top operators (by device or CPU self time) to list.")
    return parser


def _busy(events: Any, device: torch.device) -> tuple[float, float, list[dict[str, Any]]]:
    """(kernel-busy seconds, host self seconds, top operators) from a finished profiler's ``key_averages()``."""
    # kernels only: an operator's self device time repeats the time of the kernels it launched
    device_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events
                    if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    host_us = sum(getattr(e, "self_cpu_time_total", 0) or 0 for e in events)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = sorted(events, key=lambda e: getattr(e, key, 0) or 0, reverse=True)
    rows = [{"op": e.key[:60], "self_s": round((getattr(e, key, 0) or 0) / 1e6, 5), "calls": e.count} for e in top]
    return device_us / 1e6, host_us / 1e6, rows


def _profiled(fn: Any, steps: int, device: torch.device, top: int) -> dict[str, Any]:
    """Wall time per call (synchronised) and, from the profiler, kernel-busy and host time per call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    common.synchronize(device)  # warm-up outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    wall = common.timed(fn, device, steps)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        common.synchronize(device)
    events = prof.key_averages()  # slow on long CUDA traces: computed once
    busy, host, rows = _busy(events, device)
    wall_s = common.summarize(wall)["median_s"]
    out = {"wall_s": round(wall_s, 5), "host_self_s": round(host / steps, 5), "kernel_launches_per_call": None,
           "top": rows[:top]}
    if device.type == "cuda":
        out["kernel_busy_s"] = round(busy / steps, 5)
        out["kernel_busy_fraction"] = round(busy / steps / wall_s, 3)
        out["kernel_launches_per_call"] = sum(e.count for e in events if "LaunchKernel" in e.key) // steps
    return out


def training_step(model: Any, batch: int, device: torch.device, bf16: bool) -> Any:
    """One optimizer step as the trainer takes it: batched backbone, VAE encode, ControlNet loss, AdamW."""
    info = model.backbone.info
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    crops = torch.rand(batch, 3, *info.input_size, generator=generator).to(device)
    targets = torch.rand(batch, 3, model.base.resolution, model.base.resolution, generator=generator).to(device)
    drop = torch.zeros(batch, dtype=torch.bool)

    def step() -> None:
        with torch.no_grad():
            feats = model.backbone.features(model.backbone.normalize(crops))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.training_loss(feats, targets, drop, generator=generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())  # the trainer reads the loss every step (NaN check)

    return step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    arch = common.apply_common(args)
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    start = time.perf_counter()
    model = common.build_model(arch, device, seed=args.seed)
    build_s = time.perf_counter() - start

    train = {}
    for batch in args.train_batches:
        train[f"batch {batch}"] = _profiled(training_step(model, batch, device, bf16), args.steps, device, args.top)
        train[f"batch {batch}"]["samples_per_s"] = round(batch / train[f"batch {batch}"]["wall_s"], 3)
        _partial(f"train batch {batch}", train[f"batch {batch}"])
    model.controlnet.zero_grad(set_to_none=True)

    n = args.batch_size or arch.batch_size
    call = common.denoiser_call(model, n)
    guidance = model.guidance_scale

    def guided_call() -> None:  # bf16 autocast on a GPU; the weights' own dtype decides what it casts
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            call(guidance)

    variants = [("fp32 weights + bf16 autocast" if bf16 else "fp32", None)]
    if bf16:
        variants.append(("bf16 weights", lambda: [m.to(torch.bfloat16) for m in (*model.base.modules(), model.controlnet)]))
    variants.append(("+ channels_last", lambda: model.optimize(channels_last=True)))
    denoiser = {}
    for name, change in variants:
        if change is not None:
            change()  # cumulative: each variant keeps the previous one's changes
        result = _profiled(guided_call, args.steps, device, args.top)
        result["ddim50_cfg_images_per_s_estimate"] = round(n / (50 * result["wall_s"]), 3)
        denoiser[name] = result
        _partial(f"denoiser {name}", result)
    report = {"benchmark": "profile", "machine": common.machine(), "device": str(device), "config": arch.name,
              "settings": {"train_batches": args.train_batches, "denoise_batch": n, "cfg": guidance != 1.0,
                           "steps": args.steps, "bf16": bf16},
              "arch": common.arch_summary(arch), "build_s": round(build_s, 2), "train": train, "denoiser": denoiser}
    return common.emit(report, args.jsonl)


def _partial(what: str, result: dict[str, Any]) -> None:
    """One line per finished measurement (stderr), so a run stopped at its time limit still reports it."""
    brief = {k: v for k, v in result.items() if k != "top"}
    print(f"# {what}: {brief}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
