"""The sampler's GPU defaults change nothing on a CPU (bit for bit), a half-precision denoiser samples within
its tolerance, and the memory-budget batch is the given one on a CPU and the arithmetic of the probe on CUDA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from featinv.diffusion import memory
from featinv.diffusion.model import FeatInv, load_model
from tests.fixtures_model import make_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE = {"seeds": [0, 1, 2], "steps": 3, "progress": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("sampler_speed"))


@pytest.fixture(scope="module")
def features(run):
    model = FeatInv.from_pretrained(run)
    entry = model.config["backbone"]
    return torch.randn(3, int(entry["channels"]), *entry["grid"], generator=torch.Generator().manual_seed(0))


def test_cpu_defaults_and_auto_batch_are_bit_identical(run, features):
    plain = FeatInv.from_pretrained(run).reconstruct(features=features, batch_size=16, **SAMPLE)
    loaded = load_model(run, device="cpu")
    assert loaded.optimizations == {"channels_last": False, "compile": False, "compile_mode": None}
    assert all(p.dtype == torch.float32 for p in loaded.base.unet.parameters())
    assert all(p.is_contiguous() for p in loaded.controlnet.parameters())
    for batch in (16, "auto"):
        again = loaded.reconstruct(features=features, batch_size=batch, **SAMPLE)
        assert torch.equal(plain.images, again.images)
        assert torch.equal(plain.fidelity, again.fidelity)


def test_a_bf16_denoiser_samples_within_bf16_tolerance(run, features):
    """What ``sampling_defaults`` does on CUDA (and the trainer's bf16 frozen UNet), run on a CPU: the sampler
    autocasts to the stored precision, so half-precision weights need no other change."""
    plain = FeatInv.from_pretrained(run).reconstruct(features=features, **SAMPLE)
    model = FeatInv.from_pretrained(run)
    for module in (model.base.unet, model.controlnet, model.backbone.model):
        module.to(torch.bfloat16)
    half = model.reconstruct(features=features, **SAMPLE)
    assert half.images.dtype == torch.float32 and half.fidelity.dtype == torch.float32
    assert (half.images - plain.images).abs().mean() < 0.02
    assert (half.fidelity - plain.fidelity).abs().max() < 0.05


def test_fitting_batch_is_the_wanted_one_on_a_cpu_and_free_memory_over_the_per_sample_peak_on_cuda(monkeypatch):
    assert memory.fitting_batch_size(SimpleNamespace(device=torch.device("cpu")), 24) == 24
    gib = 2**30
    footprints = {1: 3 * gib, 2: 5 * gib}  # 2 GiB per sample, 1 GiB fixed
    monkeypatch.setattr(memory, "sample_footprint", lambda model, guidance, batch: footprints[batch])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (41 * gib, 80 * gib))
    cuda_model = SimpleNamespace(device=torch.device("cuda"))
    assert memory.fitting_batch_size(cuda_model, 1000, budget=1.0) == 20
    assert memory.fitting_batch_size(cuda_model, 8, budget=1.0) == 8
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (gib // 2, 80 * gib))
    assert memory.fitting_batch_size(cuda_model, 8) == 1
