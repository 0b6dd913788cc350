"""FLOPs per training step and per denoiser call, counted with ``torch.utils.flop_counter.FlopCounterMode``.

Prints ONE JSON line: per batch size the training step's FLOPs (backbone forward + VAE encode + ControlNet
and UNet forward and backward, i.e. featinv's step; ``without_backbone`` is the ``--cache-features`` step),
the denoiser call's (with CFG both branches in one batched call, and without), the VAE decode's, and per
image for each sampling schedule (steps x denoiser call + decode).

The default device is ``meta``: shapes only, no memory and no arithmetic, so the paper-size model is
counted in seconds on any machine (a FLOP count does not depend on the device). Attention is counted on
PyTorch's math path on every device (see ``common.counting_flops``). Multiply and add count as 2 FLOPs.

With ``--results FILE`` (JSON lines of ``bench_train.py`` / ``bench_reconstruct.py``), every measured
rate of the same architecture is turned into achieved TFLOP/s and, for a known card, the fraction of its
dense peak (e.g. H100 SXM bf16 989.4 TFLOP/s).

Examples
  python benchmarks/flops.py --config minisd                  # paper-size counts, on the meta device
  python benchmarks/flops.py --config minisd --results benchmarks/results/gpu.jsonl
  python benchmarks/flops.py --config tiny --device cpu --batch-sizes 2
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
from bench_reconstruct import parse_schedule  # noqa: E402

TFLOP = 1e12


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_arguments(parser, default_device="meta")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64], help="training batches to count")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's, 1.75)")
    parser.add_argument("--schedules", type=parse_schedule, nargs="+", default=[("ddim", 50), ("dpm++", 20)],
                        metavar="NAME:STEPS", help="per-image totals for these schedules")
    parser.add_argument("--results", type=Path, default=None,
                        help="JSON lines of bench_train/bench_reconstruct: add achieved TFLOP/s and peak fractions")
    return parser


def training_step_flops(model: Any, batch: int, seed: int) -> dict[str, float]:
    """FLOPs of one optimizer step's compute on ``batch`` samples (the AdamW update itself is elementwise
    and not counted): the batched backbone forward, then loss forward + backward."""
    device = model.device
    info = model.backbone.info
    res = model.base.resolution
    model.trainable_parameters()
    if torch.device(device).type == "meta":
        # the input checks of FeatInv._conditioning read values (NaN test), which meta tensors lack; they do
        # no matrix work, so counting skips them (an instance attribute: the class is untouched)
        model._conditioning = lambda f: f.to(device, torch.float32)
    crops = torch.randn(batch, 3, *info.input_size, device=device)
    targets = torch.rand(batch, 3, res, res, device=device)
    generator = torch.Generator().manual_seed(seed)

    def backbone() -> None:
        with torch.no_grad():
            model.backbone.features(crops, pooled=model.pooled)

    def loss_and_backward() -> None:
        feats = torch.randn(batch, info.channels, *info.grid, device=device)
        loss = model.training_loss(feats, targets, torch.zeros(batch, dtype=torch.bool), generator)
        loss.backward()

    backbone_flops = common.count_flops(backbone)
    loss_flops = common.count_flops(loss_and_backward)
    model.controlnet.zero_grad(set_to_none=True)
    total = backbone_flops + loss_flops
    return {"batch": batch, "backbone_tflop": common.sig(backbone_flops / TFLOP),
            "loss_fwd_bwd_tflop": common.sig(loss_flops / TFLOP), "total_tflop": common.sig(total / TFLOP),
            "per_sample_tflop": common.sig(total / batch / TFLOP),
            "per_sample_without_backbone_tflop": common.sig(loss_flops / batch / TFLOP)}


def sampling_flops(model: Any, guidance: float, n: int = 2) -> dict[str, float]:
    """Per image: one denoiser call with CFG (one batched call of 2n), without CFG, and the VAE decode."""
    call_with = common.denoiser_call(model, n)
    latents = common.random_latents(model, n)
    model.controlnet.eval()
    with torch.inference_mode():
        cfg = common.count_flops(lambda: call_with(guidance))
        plain = common.count_flops(lambda: call_with(1.0))
        decode = common.count_flops(lambda: model.base.decode(latents))
    return {"denoiser_call_cfg_per_image_tflop": common.sig(cfg / n / TFLOP),
            "denoiser_call_per_image_tflop": common.sig(plain / n / TFLOP),
            "vae_decode_per_image_tflop": common.sig(decode / n / TFLOP)}


def train_precision(record: dict[str, Any]) -> str:
    """The math unit a bench_train record ran on (its trainer allows TF32 on GPUs, so fp32 means TF32)."""
    mixed = record.get("settings", {}).get("mixed_precision", "no")
    if mixed in ("bf16", "fp16"):
        return mixed
    return "tf32" if str(record.get("device", "")).startswith("cuda") else "fp32"


def peak_fractions(records: list[dict[str, Any]], arch: str, train: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Achieved TFLOP/s and peak fractions of every measured rate of architecture ``arch``."""
    any_train = next(iter(train.values()))
    out = []
    for record in records:
        kind, gpu = record.get("benchmark"), record.get("machine", {}).get("gpu")
        if kind not in ("train", "reconstruct") or record.get("config") != arch:
            continue
        if kind == "train":
            settings = record.get("settings", {})
            unit = train_precision(record)
            for mode, result in record.get("results", {}).items():
                per_sample = any_train["per_sample_without_backbone_tflop" if mode == "cache" else "per_sample_tflop"]
                rate = float(result["samples_per_s"])
                label = f"train {mode} batch {settings.get('batch_size')} {settings.get('mixed_precision')}"
                if settings.get("gradient_checkpointing"):
                    label += " +checkpointing (recompute not counted)"
                out.append({"what": label, "samples_per_s": rate, "tflop_per_sample": per_sample,
                            **common.peak_fraction(rate * per_sample, gpu, unit)})
        else:
            settings = record.get("settings", {})
            for schedule, result in record.get("results", {}).items():
                label = (f"reconstruct {schedule} batch {settings.get('batch_size')} {settings.get('precision')}"
                         + (" channels_last" if settings.get("channels_last") else "")
                         + (" compile" if settings.get("compile") else ""))
                out.append({"what": label, "images_per_s": result["images_per_s"],
                            "tflop_per_image": result.get("tflop_per_image"),
                            **{k: result[k] for k in ("achieved_tflops", "peak_basis", "peak_fraction") if k in result}})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    arch = common.apply_common(args)
    if any(b < 1 for b in args.batch_sizes):
        raise SystemExit("error: --batch-sizes must be >= 1")
    start = time.perf_counter()
    model = common.build_model(arch, args.device, seed=args.seed)
    build_s = time.perf_counter() - start
    guidance = model.guidance_scale if args.guidance is None else args.guidance
    sampling = sampling_flops(model, guidance)
    train = {str(b): training_step_flops(model, b, args.seed) for b in args.batch_sizes}
    per_image = {
        f"{name}:{steps}": common.sig(steps * sampling["denoiser_call_cfg_per_image_tflop" if guidance != 1.0
                                                      else "denoiser_call_per_image_tflop"]
                                      + sampling["vae_decode_per_image_tflop"])
        for name, steps in args.schedules}
    report: dict[str, Any] = {
        "benchmark": "flops", "machine": common.machine(), "device": args.device, "config": arch.name,
        "settings": {"batch_sizes": args.batch_sizes, "guidance": guidance, "seed": args.seed,
                     "attention_counted_as": "math path (2 matmuls, 4*b*h*s^2*d)"},
        "arch": common.arch_summary(arch), "build_s": round(build_s, 2), "unit": "TFLOP",
        "train_step": train, "sampling": sampling, "reconstruct_per_image_tflop": per_image,
    }
    if args.results is not None:
        if not args.results.is_file():
            raise SystemExit(f"error: --results {args.results} does not exist; pass the JSON lines file of the runs")
        report["results_file"] = str(args.results)
        report["peak_fractions"] = peak_fractions(common.read_jsonl(args.results), arch.name, train)
    return common.emit(report, args.jsonl)


if __name__ == "__main__":
    main()
