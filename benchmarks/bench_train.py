"""Training throughput: featinv's loop vs the naive loop (backbone per image inside the Dataset).

Prints ONE JSON line: machine, device, settings, and per mode samples/s, seconds/step and peak memory.

Modes
  ours   featinv.train: workers decode + crop, the backbone runs batched inside the training step
  cache  featinv.train --cache-features: features + targets computed once for fixed crops
  naive  the official code's way: each Dataset item runs the backbone on its own image; it gets the same
         --num-workers, pinned memory and persistent workers as ours (on CUDA its workers are spawned and each
         holds its own backbone on the GPU: CUDA cannot be used in a forked worker)

Speed options of featinv's loop (the ablation switches each): --channels-last / --no-channels-last,
--frozen-precision, --optimizer-impl, --compile [--compile-mode], --cache-latents (cache mode). The cache
build (cache mode) and the compile warm-up are timed apart from samples/s and reported (cache_build_s,
compile_warmup_s); setup_s is the time from the call to the first step's start (cache build included).

Configs
  tiny    CPU-sized, the test-suite's model: timm:tf_efficientnet_lite0 (random weights, 224 px, 1280x7x7) +
          pixel base 16 px (UNet widths 8/16), conv encoder width 8
  minisd  MiniSD-sized random weights for a GPU: UNet 320/640/1280/1280, cross-attention 768, latents
          4x32x32 + SD VAE (256 px); timm:convnext_base at 288 px (features 1024x9x9)

Examples
  python benchmarks/bench_train.py --config tiny --steps 20
  python benchmarks/bench_train.py --config minisd --device cuda --mixed-precision bf16 --steps 30 --num-workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # spawned DataLoader workers import this file without running main()
    sys.path.insert(0, str(REPO))

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"backbone": "timm:tf_efficientnet_lite0", "input_size": 224, "base": "pixel", "resolution": 16,
             "encoder_kwargs": {"hidden": 8}, "image_size": (256, 192)},
    "minisd": {"backbone": "timm:convnext_base", "input_size": 288, "base": "minisd", "resolution": 256,
               "encoder_kwargs": None, "image_size": (500, 375)},
}


def machine() -> dict[str, Any]:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_images(folder: Path, n: int, size: tuple[int, int]) -> Path:
    """Smooth random colour fields (photo-like statistics, PNG) so decoding cost is realistic."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BICUBIC)
        img.save(folder / f"img{i:04d}.png")
    return folder


def make_base(name: str, device: str, folder: Path) -> Any:
    """The diffusion base: a fresh pixel base (saved, so the run is loadable), or a MiniSD-shaped Stable
    Diffusion base with random weights (kept in memory: no 3 GB write)."""
    from featinv.diffusion.bases import PixelBase, StableDiffusionBase

    if name == "pixel":
        base = PixelBase.create(resolution=16, widths=(8, 16), cross_attention_dim=8, attention_head_dim=4, seed=0,
                                device=device)
        base.save_pretrained(folder / "pixel_base")
        return base
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=32, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                layers_per_block=2, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=256)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    prompts = torch.randn(2, 77, 768)  # stands in for the CLIP embeddings of the prompt and the empty prompt
    return StableDiffusionBase("sd:minisd-random", unet, dict(scheduler.config), prompts, vae=vae, device=device)


def run_ours(args: argparse.Namespace, spec: dict[str, Any], data: Path, out: Path, cache: bool) -> dict[str, Any]:
    from featinv.training.config import TrainConfig
    from featinv.training.loop import train, training_status

    stamps: list[float] = []
    config = TrainConfig(
        data=data, out=out, backbone=spec["backbone"], backbone_weights="none", input_size=spec["input_size"],
        base=make_base(spec["base"], args.device, out.parent), encoder_kwargs=spec["encoder_kwargs"], batch_size=args.batch_size,
        max_steps=args.warmup + args.steps, num_workers=args.num_workers, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, device=args.device, cache_features=cache,
        checkpoint_every=10**9, log_every=10**9, num_val_images=1, val_steps=1, progress=False, lr=1e-5,
        channels_last=args.channels_last, frozen_precision=args.frozen_precision, optimizer_impl=args.optimizer_impl,
        compile=args.compile, compile_mode=args.compile_mode, cache_latents=cache and args.cache_latents,
    )
    _reset_peak(args.device)
    start = time.perf_counter()
    train(config, on_step=lambda step, loss: stamps.append(time.perf_counter()))
    state = training_status(out)
    result = _rates(stamps, args)
    result.update({k: state[k] for k in ("cache_build_s", "compile_warmup_s") if k in state})
    first_step = result.get("compile_warmup_s", stamps[1] - stamps[0] if len(stamps) > 1 else 0.0)
    result["setup_s"] = round(stamps[0] - start - first_step, 3)  # model + data set-up (+ cache build)
    return result


def run_naive(args: argparse.Namespace, spec: dict[str, Any], data: Path) -> dict[str, Any]:
    """The official code's structure: the Dataset runs the backbone on one image per item."""
    from featinv.diffusion.model import FeatInv
    from featinv.training.data import AugmentedCrops, load_training_images

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = FeatInv.create(spec["backbone"], make_base(spec["base"], args.device, data.parent), backbone_weights="none",
                           input_size=spec["input_size"], encoder_kwargs=spec["encoder_kwargs"], device=device)
    crops = AugmentedCrops(load_training_images(data), {"crop": spec["input_size"], "target": model.base.resolution})
    workers = args.num_workers
    spawn = workers > 0 and device.type == "cuda"  # CUDA cannot be initialised again in a forked worker
    loader = torch.utils.data.DataLoader(
        PerImageFeatures(crops, spec, args.device), batch_size=args.batch_size, shuffle=True, num_workers=workers,
        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        multiprocessing_context="spawn" if spawn else None)
    params = model.trainable_parameters()
    if args.gradient_checkpointing:
        model.controlnet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    stamps: list[float] = []
    _reset_peak(args.device)
    generator = torch.Generator().manual_seed(0)
    while len(stamps) < args.warmup + args.steps:
        for batch in loader:
            drop = torch.rand(len(batch["target"]), generator=generator) < 0.15
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model.training_loss(batch["features"].to(device), batch["target"].to(device), drop, generator)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            if len(stamps) >= args.warmup + args.steps:
                break
    return _rates(stamps, args)


class PerImageFeatures(torch.utils.data.Dataset):
    """The official code's Dataset: one backbone forward per item (each worker process builds its own backbone)."""

    def __init__(self, crops: Any, spec: dict[str, Any], device: str) -> None:
        self.crops, self.spec, self.device = crops, spec, device
        self._backbone: Any = None

    def __len__(self) -> int:
        return len(self.crops)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_backbone": None}  # workers build their own

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._backbone is None:
            from featinv.features.backbone import backbone

            self._backbone = backbone(self.spec["backbone"], weights="none", input_size=self.spec["input_size"],
                                      device=self.device)
        item = self.crops[(index, index)]
        with torch.no_grad():
            x = self._backbone.normalize(item["crop"][None].float().div(255).to(self.device))
            features = self._backbone.features(x)[0]
        return {"features": features.cpu(), "target": item["target"].float().div(255)}


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _rates(stamps: list[float], args: argparse.Namespace) -> dict[str, Any]:
    """Throughput over the steps after warm-up (step w-1 end .. last step end)."""
    timed = stamps[args.warmup - 1:] if args.warmup else stamps
    seconds = (timed[-1] - timed[0]) / max(1, len(timed) - 1) if len(timed) > 1 else float("nan")
    result = {"samples_per_s": round(args.batch_size / seconds, 3), "s_per_step": round(seconds, 4),
              "steps_timed": len(timed) - 1}
    if args.device.startswith("cuda"):
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    else:
        result["peak_rss_gb_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--mode", choices=["all", "ours", "cache", "naive"], default="all")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=64, help="synthetic training images")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC networks (default: featinv's auto, on for CUDA)")
    parser.add_argument("--frozen-precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    parser.add_argument("--optimizer-impl", choices=["auto", "fused", "foreach", "loop"], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step's networks (ours/cache)")
    parser.add_argument("--compile-mode", default=None, help="e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--cache-latents", action="store_true", help="cache mode also caches the VAE latents")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = CONFIGS[args.config]
    modes = ["ours", "cache", "naive"] if args.mode == "all" else [args.mode]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data = make_images(Path(tmp) / "images", args.images, spec["image_size"])
        for mode in modes:
            if mode == "naive":
                results[mode] = run_naive(args, spec, data)
            else:
                results[mode] = run_ours(args, spec, data, Path(tmp) / f"run_{mode}", cache=mode == "cache")
    report = {"benchmark": "train", "machine": machine(), "device": args.device, "config": args.config,
              "settings": {k: v for k, v in vars(args).items() if k not in ("config", "device")}, "results": results}
    if "naive" in results:
        base = results["naive"]["samples_per_s"]
        report["speedup_vs_naive"] = {m: round(r["samples_per_s"] / base, 2) for m, r in results.items() if m != "naive"}
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
