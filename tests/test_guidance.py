"""Feature guidance in the sampler: off is the paper's sampler bit for bit, on raises the backbone's agreement
with the target, schedules pick the right steps, every scheduler / prediction type / latent base works, and
bad options are one-line errors (API and CLI)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from featinv.cli import app
from featinv.diffusion import sampler as sampler_module
from featinv.diffusion.guidance import FeatureGuidance, predicted_clean
from featinv.diffusion.sampler import guided_prediction
from featinv.errors import FeatinvError
from featinv.features.similarity import cosine_median
from tests.fixtures_model import make_tiny_images, make_tiny_model, make_tiny_run

runner = CliRunner()
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def pixel_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("pixel"))


@pytest.fixture(scope="module")
def sd_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("sd"), base="sd")


@pytest.fixture(scope="module")
def feats(pixel_model):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return pixel_model.features(images)


def _paper_sampler(model, features: torch.Tensor, seeds: list[int], steps: int) -> torch.Tensor:
    """The paper's DDIM loop written out independently of ``denoise`` (no guidance anywhere)."""
    base = model.base
    scheduler = base.make_scheduler("ddim")
    scheduler.set_timesteps(steps)
    shape = (base.latent_channels, base.latent_size, base.latent_size)
    latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    n = len(seeds)
    cond = base.prompt_embeddings(torch.zeros(n, dtype=torch.bool))
    uncond = base.prompt_embeddings(torch.ones(n, dtype=torch.bool))
    with torch.inference_mode():
        for t in scheduler.timesteps:
            pred = guided_prediction(base.unet, model.controlnet, latents, t, features, cond, uncond,
                                     model.guidance_scale)
            latents = scheduler.step(pred.float(), t, latents).prev_sample
        return base.decode(latents)


def test_strength_zero_is_the_paper_sampler_bit_for_bit(pixel_model, feats, monkeypatch):
    reference = _paper_sampler(pixel_model, feats, SEEDS, steps=3)
    calls = []
    monkeypatch.setattr(sampler_module, "guide_latents", lambda *a, **k: calls.append(1))
    for option in (0.0, 0, None, FeatureGuidance(0.0, schedule="ramp", normalize="none")):
        rec = pixel_model.reconstruct(features=feats, seeds=SEEDS, steps=3, progress=False, feature_guidance=option)
        assert torch.equal(rec.images, reference)
    plain = pixel_model.reconstruct(features=feats, seeds=SEEDS, steps=3, progress=False, fidelity=False)
    assert torch.equal(plain.images, reference) and plain.fidelity is None
    assert calls == []  # off: no extra compute at all


@pytest.mark.parametrize("base", ["pixel", "sd"])
def test_guidance_raises_the_backbones_agreement(base, pixel_model, sd_model, feats):
    model = pixel_model if base == "pixel" else sd_model  # sd: through the VAE decoder
    plain = model.reconstruct(features=feats, seeds=SEEDS, steps=4, progress=False)
    guided = model.reconstruct(features=feats, seeds=SEEDS, steps=4, progress=False, feature_guidance=0.3)
    assert guided.fidelity.mean() > plain.fidelity.mean() + 0.005, (plain.fidelity, guided.fidelity)
    assert guided.meta["feature_guidance"] == {"strength": 0.3, "schedule": "all", "normalize": "std"}
    # the fidelity score is evaluation's cosine: the backbone's own resize and normalisation, median over positions
    backbone = model.backbone
    seen = backbone.features(backbone.normalize(guided.images))
    torch.testing.assert_close(guided.fidelity, cosine_median(feats.cpu(), seen.cpu()), atol=1e-5, rtol=0)


def test_guidance_works_inside_a_callers_inference_mode(pixel_model, feats):
    expected = pixel_model.reconstruct(features=feats[:1], steps=2, progress=False, feature_guidance=0.3)
    with torch.inference_mode():
        maps = feats[:1].clone()  # an inference tensor
        got = pixel_model.reconstruct(features=maps, steps=2, progress=False, feature_guidance=0.3)
    assert torch.equal(got.images, expected.images)


@pytest.mark.parametrize("scheduler", ["dpm++", "unipc"])
def test_every_scheduler_can_be_guided(pixel_model, feats, scheduler):
    plain = pixel_model.reconstruct(features=feats[:1], steps=2, scheduler=scheduler, progress=False)
    guided = pixel_model.reconstruct(features=feats[:1], steps=2, scheduler=scheduler, progress=False,
                                     feature_guidance=0.3)
    assert torch.isfinite(guided.images).all() and not torch.equal(plain.images, guided.images)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_clean_estimate_for_every_prediction_type(kind):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(prediction_type=kind)
    gen = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    t = torch.tensor(600)
    noisy = scheduler.add_noise(clean, noise, t)
    prediction = {"epsilon": noise, "v_prediction": scheduler.get_velocity(clean, noise, t), "sample": clean}[kind]
    torch.testing.assert_close(predicted_clean(scheduler, noisy, prediction, t), clean, atol=1e-4, rtol=1e-4)


def test_schedules_pick_their_steps(pixel_model, feats, monkeypatch):
    total = 4
    assert [FeatureGuidance(0.2).weight(i, total) for i in range(total)] == [0.2] * 4
    assert [FeatureGuidance(0.2, "first:1").weight(i, total) for i in range(total)] == [0.2, 0, 0, 0]
    assert [FeatureGuidance(0.2, "last:2").weight(i, total) for i in range(total)] == [0, 0, 0.2, 0.2]
    ramp = [FeatureGuidance(0.2, "ramp").weight(i, total) for i in range(total)]
    assert ramp == pytest.approx([0.2, 0.15, 0.1, 0.05])
    seen = []
    real = sampler_module.guide_latents

    def spy(guidance, target, scheduler, latents, t, weight, predict):
        seen.append((int(t), weight))
        return real(guidance, target, scheduler, latents, t, weight, predict)

    monkeypatch.setattr(sampler_module, "guide_latents", spy)
    pixel_model.reconstruct(features=feats[:1], steps=total, progress=False,
                            feature_guidance=FeatureGuidance(0.2, "last:2"))
    assert [w for _, w in seen] == [0.2, 0.2] and seen[0][0] > seen[1][0]  # the two lowest-noise steps


def test_chunking_changes_memory_not_images(sd_model, feats):
    one = sd_model.reconstruct(features=feats, seeds=SEEDS, steps=2, progress=False,
                               feature_guidance=FeatureGuidance(0.3, chunk_size=1))
    all_ = sd_model.reconstruct(features=feats, seeds=SEEDS, steps=2, progress=False,
                                feature_guidance=FeatureGuidance(0.3, chunk_size=8))
    torch.testing.assert_close(one.images, all_.images, atol=1e-4, rtol=0)


def test_pooled_runs_compare_pooled_vectors(tmp_path, feats):
    model = make_tiny_model(tmp_path, pooled=True)
    rec = model.reconstruct(features=feats[:2], seeds=[0, 1], steps=2, progress=False, feature_guidance=0.3)
    seen = model.backbone.features(model.backbone.normalize(rec.images)).mean(dim=(2, 3))
    expected = torch.nn.functional.cosine_similarity(seen.cpu(), feats[:2].mean(dim=(2, 3)).cpu(), dim=1)
    torch.testing.assert_close(rec.fidelity, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options, fragment", [
    ({"strength": -0.1}, "finite number >= 0"),
    ({"strength": math.nan}, "finite number >= 0"),
    ({"strength": "strong"}, "is not a number"),
    ({"strength": 0.1, "schedule": "sometimes"}, "unknown guidance schedule"),
    ({"strength": 0.1, "schedule": "first:0"}, "unknown guidance schedule"),
    ({"strength": 0.1, "normalize": "l2"}, "unknown guidance normalisation"),
    ({"strength": 0.1, "chunk_size": 0}, "chunk size"),
])
def test_bad_options_are_one_line_errors(options, fragment):
    with pytest.raises(FeatinvError, match=fragment) as info:
        FeatureGuidance(**options)
    assert "\n" not in str(info.value)


def test_reconstruct_refuses_a_negative_strength_before_sampling(pixel_model, feats):
    with pytest.raises(FeatinvError, match="feature guidance strength"):
        pixel_model.reconstruct(features=feats[:1], steps=1, progress=False, feature_guidance=-1.0)


def test_cli_flag_and_fidelity_in_the_index(tmp_path):
    run = make_tiny_run(tmp_path)
    images = make_tiny_images(tmp_path / "photos", count=2)

    def args(out: str, *extra: str) -> list[str]:
        return ["reconstruct", "--run", str(run), "--images", str(images), "--out", str(tmp_path / out),
                "--steps", "2", "--quiet", *extra]

    result = runner.invoke(app, args("out", "--feature-guidance", "0.2", "--guidance-schedule", "last:1"))
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["feature_guidance"] == {"strength": 0.2, "schedule": "last:1", "normalize": "std"}
    assert len(index["items"]) == 2
    assert all(-1.0 <= item["fidelity"] <= 1.0 for item in index["items"])
    # a folder never mixes settings: the unguided sampler is refused there
    refused = runner.invoke(app, args("out"))
    assert isinstance(refused.exception, FeatinvError) and "feature_guidance" in str(refused.exception)
    plain = runner.invoke(app, args("plain"))
    assert plain.exit_code == 0, plain.output
    plain_index = json.loads((tmp_path / "plain" / "index.json").read_text())
    assert plain_index["feature_guidance"] is None and all("fidelity" in item for item in plain_index["items"])
    for bad in (["--feature-guidance", "-1"], ["--guidance-schedule", "often"], ["--guidance-normalize", "l1"]):
        result = runner.invoke(app, args("bad", "--feature-guidance", "0.1", *bad))
        assert isinstance(result.exception, FeatinvError) and "\n" not in str(result.exception), result.output
        assert not (tmp_path / "bad").exists()  # refused before anything is written
