"""Shared pieces of the benchmark scripts: the two architectures, timing, FLOP counting, machine/card
description, peak rates and the one-JSON-line output.

Architectures (random weights; nothing is downloaded)
  tiny    CPU-sized, Stable-Diffusion-shaped: UNet widths 32/64, latents 4x8x8, VAE 16/32 (16 px images),
          cross-attention 32; backbone timm:test_convnext at 64 px
  minisd  the paper's base, MiniSD-shaped (SD 1.x UNet at 256 px): UNet 320/640/1280/1280, 2 layers per
          block, cross-attention 768, latents 4x32x32 + the SD VAE (128/256/512/512); backbone
          timm:convnext_base at 288 px (features 1024x9x9)

The scripts import this file as ``common`` (their own folder is on ``sys.path`` when run as scripts);
importing it also puts the repository root on ``sys.path``, so ``featinv`` imports on a machine where the
package is not installed (the GPU machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Arch:
    """A FeatInv architecture to benchmark: backbone + SD-shaped base + encoder, all randomly initialised."""

    name: str
    backbone: str
    input_size: int
    latent_size: int
    unet_widths: tuple[int, ...]
    layers_per_block: int
    cross_attention_dim: int
    attention_head_dim: int
    norm_num_groups: int
    vae_widths: tuple[int, ...]
    prompt_tokens: int
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64            # default benchmark batch
    threads: int | None = None      # default torch CPU threads (None: torch's choice)

    @property
    def resolution(self) -> int:
        return self.latent_size * 2 ** (len(self.vae_widths) - 1)


ARCHS: dict[str, Arch] = {
    "tiny": Arch("tiny", "timm:test_convnext", 64, latent_size=8, unet_widths=(32, 64), layers_per_block=1,
                 cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, vae_widths=(16, 32),
                 prompt_tokens=8, encoder_kwargs={"hidden": 16}, batch_size=4),
    "minisd": Arch("minisd", "timm:convnext_base", 288, latent_size=32, unet_widths=(320, 640, 1280, 1280),
                   layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                   vae_widths=(128, 256, 512, 512), prompt_tokens=77, batch_size=64),
}


# ---- building -------------------------------------------------------------------------------------

def build_base(arch: Arch, device: str | torch.device = "cpu", seed: int = 0) -> Any:
    """A ``StableDiffusionBase`` of the given shape with random weights, kept in memory (no 3 GB write).

    Modules are created directly on ``device`` (fast random init on a GPU; ``meta`` allocates nothing).
    Random prompt embeddings stand in for CLIP's two prompt embeddings: same shape, same cost.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from featinv.diffusion.bases import StableDiffusionBase

    n = len(arch.unet_widths)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=arch.latent_size, in_channels=4, out_channels=4, block_out_channels=arch.unet_widths,
            layers_per_block=arch.layers_per_block,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=arch.cross_attention_dim, attention_head_dim=arch.attention_head_dim,
            norm_num_groups=arch.norm_num_groups)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=arch.vae_widths, latent_channels=4,
            layers_per_block=2 if arch.name == "minisd" else 1, norm_num_groups=arch.norm_num_groups,
            down_block_types=("DownEncoderBlock2D",) * len(arch.vae_widths),
            up_block_types=("UpDecoderBlock2D",) * len(arch.vae_widths), sample_size=arch.resolution)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    prompts = torch.randn(2, arch.prompt_tokens, arch.cross_attention_dim, generator=torch.Generator().manual_seed(seed))
    return StableDiffusionBase(f"sd:{arch.name}-random", unet, dict(scheduler.config), prompts, vae=vae, device=device)


def build_model(arch: Arch, device: str | torch.device = "cpu", seed: int = 0) -> Any:
    """The full FeatInv model (backbone, frozen base, ControlNet + encoder) with random weights on ``device``."""
    import featinv
    from featinv.diffusion.model import FeatInv

    device = torch.device(device)
    bb = featinv.backbone(arch.backbone, weights="none", input_size=arch.input_size, device=device)
    base = build_base(arch, device, seed=seed)
    torch.manual_seed(seed)
    with torch.device(device):  # the ControlNet copy is initialised where it will run
        return FeatInv.create(bb, base, encoder_kwargs=dict(arch.encoder_kwargs) or None, device=device)


# ---- timing and memory ----------------------------------------------------------------------------

def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so host clocks measure the work and not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str | torch.device, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``, each bracketed by device synchronisation."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summarize(times: list[float]) -> dict[str, Any]:
    """Median (what the benchmarks report) plus the spread, so noise is visible."""
    return {"median_s": round(statistics.median(times), 5), "min_s": round(min(times), 5),
            "max_s": round(max(times), 5), "runs": len(times)}


def reset_peak_memory(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str | torch.device) -> dict[str, float]:
    """Peak GPU memory since the last reset (allocated = tensors; reserved = what the allocator held), or
    the process's peak resident set on a CPU (for the whole process: includes model building)."""
    if torch.device(device).type == "cuda":
        return {"peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
    return {"peak_rss_gb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


# ---- FLOPs ----------------------------------------------------------------------------------------

def denoiser_call(model: Any, n: int) -> Callable[[float], Any]:
    """One guided denoiser call on ``n`` random latents/feature maps of ``model`` (guidance → output).

    The unit both the reconstruction benchmark and the FLOP counter measure: ControlNet + UNet, with CFG as
    one batched call of 2n when guidance != 1.
    """
    from featinv.diffusion.sampler import guided_prediction

    base, device = model.base, model.device
    info = model.backbone.info
    feats = torch.randn(n, info.channels, *info.grid, device=device)
    latents = torch.randn(n, base.latent_channels, base.latent_size, base.latent_size, device=device)
    cond = base.prompt_embeddings(torch.zeros(n, dtype=torch.bool))
    uncond = base.prompt_embeddings(torch.ones(n, dtype=torch.bool))
    t = torch.tensor(500, device=device)
    return lambda guidance: guided_prediction(base.unet, model.controlnet, latents, t, feats, cond, uncond, guidance)


def random_latents(model: Any, n: int) -> torch.Tensor:
    """``n`` random latents of the model's base (for timing or counting the VAE decode)."""
    base = model.base
    return torch.randn(n, base.latent_channels, base.latent_size, base.latent_size, device=model.device)


# counting_flops / count_flops: the package's counter (attention on the math path), so the benchmarks and the
# dry runs' estimates count alike
from featinv.diffusion.flops import count_flops, counting_flops  # noqa: E402,F401

# ---- machine and card -----------------------------------------------------------------------------

# dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, TFLOP/s; "tf32" is what fp32 matmuls and
# convolutions run at with TF32 allowed (featinv's trainer and these benchmarks allow it on GPUs)
PEAK_TFLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("H100 NVL", "H100 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", "H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", "H100 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H200 NVL", "H200 NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200", "H200 SXM", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", "L40S", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("L4", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
)


def card_peak(gpu_name: str | None, precision: str) -> dict[str, Any] | None:
    """The card's dense peak for ``precision`` (bf16 | fp16 | tf32 | fp32), or None for an unknown card."""
    if not gpu_name:
        return None
    for key, card, peaks in PEAK_TFLOPS:
        if key.lower() in gpu_name.lower() and precision in peaks:
            return {"card": card, "precision": precision, "peak_tflops": peaks[precision]}
    return None


def sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (tiny CPU and large GPU figures both stay readable)."""
    return float(f"{x:.{digits}g}")


def peak_fraction(tflops: float, gpu_name: str | None, precision: str) -> dict[str, Any]:
    """Achieved TFLOP/s and, when the card is known, the fraction of its dense peak."""
    out: dict[str, Any] = {"achieved_tflops": sig(tflops)}
    peak = card_peak(gpu_name, precision)
    if peak is not None:
        out.update(peak_basis=f"{peak['card']} {precision} dense {peak['peak_tflops']} TFLOP/s",
                   peak_fraction=sig(tflops / peak["peak_tflops"], 3))
    return out


def gpu_precision(precision: str, device: str | torch.device) -> str:
    """The unit fp32 work runs on: TF32 tensor cores on a GPU with TF32 allowed, plain fp32 otherwise."""
    if precision == "fp32" and torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return precision


def machine() -> dict[str, Any]:
    """Where the numbers came from: OS, Python, torch, CPUs, threads, load and (if any) the GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor": platform.processor(),
    }
    with contextlib.suppress(OSError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    with contextlib.suppress(ImportError):
        import diffusers

        info["diffusers"] = diffusers.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpu_sms=props.multi_processor_count, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


# ---- command line and output ----------------------------------------------------------------------

def add_common_arguments(parser: argparse.ArgumentParser, default_device: str | None = None) -> None:
    """Options every benchmark shares: architecture, device, CPU threads, results file."""
    parser.add_argument("--config", choices=sorted(ARCHS), default="tiny", help="architecture (see common.py)")
    parser.add_argument("--device", default=default_device or ("cuda" if torch.cuda.is_available() else "cpu"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", type=Path, default=None, help="also append the JSON line to this file")


def apply_common(args: argparse.Namespace) -> Arch:
    """Threads and GPU math settings from the options; returns the chosen architecture."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(getattr(args, "tf32", True))
        torch.backends.cudnn.allow_tf32 = bool(getattr(args, "tf32", True))
        torch.backends.cudnn.benchmark = bool(getattr(args, "cudnn_benchmark", True))
    return ARCHS[args.config]


def emit(report: dict[str, Any], jsonl: Path | None = None) -> dict[str, Any]:
    """Print the report as ONE JSON line; with ``jsonl``, also append it to that file (rewritten atomically)."""
    line = json.dumps(report, default=str)
    print(line, flush=True)
    if jsonl is not None:
        from featinv.io import atomic_write

        jsonl = Path(jsonl)
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        before = jsonl.read_text(encoding="utf-8") if jsonl.exists() else ""
        with atomic_write(jsonl, mode="w") as handle:
            handle.write(before + line + "\n")
    return report


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a results file (other lines, e.g. a crashed run's partial output, are skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def arch_summary(arch: Arch) -> dict[str, Any]:
    """The architecture as plain JSON, for the report."""
    out = asdict(arch)
    out["resolution"] = arch.resolution
    return out


def write_results(results: dict[str, Any], table: Callable[[dict[str, Any]], str], json_path: Path | None,
                  md_path: Path | None) -> None:
    """Save a benchmark's results as JSON and its Markdown table (each only where a path is given), and print
    the table: one way for every benchmark script, so their results files look alike."""
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1) + "\n")
    if md_path:
        md_path.write_text(table(results))
    print(table(results))
