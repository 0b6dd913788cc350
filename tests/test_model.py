"""FeatInv model on the real `sd` loading code (tiny saved SD folder) and the real backbone code.

Acceptance: a fresh ControlNet changes nothing; save -> load is bit-identical and mismatches are refused;
seeds are per sample and batch-independent; CFG matches its definition.
"""

from __future__ import annotations

import pytest
import torch

import featinv
from featinv.diffusion.controlnet import controlled_unet
from featinv.diffusion.model import FeatInv
from featinv.diffusion.sampler import guided_prediction
from featinv.errors import FeatinvError
from featinv.io import read_json, write_json
from tests.fixtures_model import TINY_BACKBONE, make_tiny_model, make_tiny_pixel_base


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("fresh"), base="sd", perturb=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model"), base="sd", perturb=True)


@pytest.fixture(scope="module")
def feats(model):
    gen = torch.Generator().manual_seed(0)
    return model.features(torch.rand(3, 3, 64, 64, generator=gen))


def _inputs(model, n=2):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, model.base.latent_channels, model.base.latent_size, model.base.latent_size, generator=gen)
    emb = model.base.prompt_embeddings(torch.zeros(n, dtype=torch.bool))
    return x, torch.tensor(500), emb


def test_fresh_controlnet_changes_nothing(fresh, feats):
    x, t, emb = _inputs(fresh)
    with torch.no_grad():
        down, mid = fresh.controlnet.residuals(x, t, emb, feats[:2])
        plain = fresh.base.unet(x, t, encoder_hidden_states=emb).sample
        steered = controlled_unet(fresh.base.unet, fresh.controlnet, x, t, emb, feats[:2])
    assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])
    assert torch.equal(steered, plain)
    # and the ControlNet really is a copy of the frozen UNet's encoder half
    assert torch.equal(fresh.controlnet.conv_in.weight, fresh.base.unet.conv_in.weight)


def test_config_describes_the_run(model):
    cfg = model.config
    assert cfg["backbone"]["spec"] == TINY_BACKBONE and cfg["backbone"]["weights"] == "none"
    assert cfg["backbone"]["channels"] == 1280 and cfg["backbone"]["grid"] == [2, 2]
    assert cfg["base"]["latent_size"] == 8 and cfg["encoder"] == "conv" and cfg["guidance_scale"] == 1.75
    assert model.controlnet.encoder.config.out_channels == model.base.first_block_width


def test_save_load_is_bit_identical(model, feats, tmp_path):
    run = model.save_pretrained(tmp_path / "run")
    loaded = FeatInv.from_pretrained(run)
    x, t, emb = _inputs(model)
    with torch.no_grad():
        a = controlled_unet(model.base.unet, model.controlnet, x, t, emb, feats[:2])
        b = controlled_unet(loaded.base.unet, loaded.controlnet, x, t, emb, feats[:2])
    assert torch.equal(a, b) and not torch.equal(a, model.base.unet(x, t, emb).sample)
    rec_a = model.reconstruct(features=feats[:2], seeds=[3, 4], steps=3, progress=False)
    rec_b = loaded.reconstruct(features=feats[:2], seeds=[3, 4], steps=3, progress=False)
    assert torch.equal(rec_a.images, rec_b.images)


def test_mismatches_are_refused(model, tmp_path):
    run = model.save_pretrained(tmp_path / "run")
    other_grid = featinv.backbone(TINY_BACKBONE, weights="none", input_size=96)
    with pytest.raises(FeatinvError, match="grid"):
        FeatInv.from_pretrained(run, backbone=other_grid)
    other_layer = featinv.backbone(TINY_BACKBONE, layer="blocks.5", weights="none", input_size=64)
    with pytest.raises(FeatinvError, match="channels"):
        FeatInv.from_pretrained(run, backbone=other_layer)
    pixel = make_tiny_pixel_base(tmp_path)
    with pytest.raises(FeatinvError, match="does not match run"):
        FeatInv.from_pretrained(run, base=f"pixel:{pixel}")
    config = read_json(run / "config.json")
    write_json(run / "config.json", {**config, "backbone": {**config["backbone"], "input_size": [96, 96]}})
    with pytest.raises(FeatinvError, match="use the run's backbone"):
        FeatInv.from_pretrained(run)
    write_json(run / "config.json", {"hello": 1})
    with pytest.raises(FeatinvError, match="not a FeatInv run"):
        FeatInv.from_pretrained(run)
    with pytest.raises(FeatinvError, match="does not exist"):
        FeatInv.from_pretrained(tmp_path / "missing")


def test_corrupt_weights_are_refused(model, tmp_path):
    run = model.save_pretrained(tmp_path / "run")
    weights = run / "controlnet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(FeatinvError, match="checksum|corrupt"):
        FeatInv.from_pretrained(run)


def test_seeds_are_per_sample_and_batch_independent(model, feats):
    alone = model.reconstruct(features=feats[:1], seeds=[5], steps=3, progress=False).images
    again = model.reconstruct(features=feats[:1], seeds=5, steps=3, progress=False).images
    batch = model.reconstruct(features=torch.cat([feats[1:2], feats[:1], feats[:1]]), seeds=[9, 5, 6],
                              steps=3, batch_size=2, progress=False)
    assert torch.equal(alone, again)
    torch.testing.assert_close(batch.images[1:2], alone, atol=1e-5, rtol=0)
    assert (batch.images[2] - batch.images[1]).abs().max() > 1e-3  # different seed, different image
    assert batch.images.shape == (3, 3, 16, 16) and batch.seeds == [9, 5, 6]
    assert batch.resized((64, 64)).shape == (3, 3, 64, 64)


def test_stochastic_scheduler_uses_per_sample_noise(model, feats):
    alone = model.reconstruct(features=feats[:1], seeds=[2], steps=3, scheduler="ddpm", progress=False).images
    batch = model.reconstruct(features=feats[:2].flip(0), seeds=[8, 2], steps=3, scheduler="ddpm",
                              progress=False).images
    torch.testing.assert_close(batch[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheduler", ["dpm++", "unipc"])
def test_other_samplers(model, feats, scheduler):
    rec = model.reconstruct(features=feats[:1], seeds=[0], steps=3, scheduler=scheduler, progress=False)
    assert rec.images.shape == (1, 3, 16, 16) and torch.isfinite(rec.images).all()


def test_cfg_definition(model, feats):
    x, t, cond = _inputs(model)
    uncond = model.base.prompt_embeddings(torch.ones(2, dtype=torch.bool))
    f = feats[:2]
    unet, cn = model.base.unet, model.controlnet
    with torch.no_grad():
        c = controlled_unet(unet, cn, x, t, cond, f)
        u = controlled_unet(unet, cn, x, t, uncond, f)  # feature map in both branches, only the prompt differs
        assert torch.equal(guided_prediction(unet, cn, x, t, f, cond, uncond, 1.0), c)
        guided = guided_prediction(unet, cn, x, t, f, cond, uncond, 1.75)
    torch.testing.assert_close(guided, u + 1.75 * (c - u), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(c, u)


def test_training_loss_trains_only_the_controlnet(model, feats):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    params = model.trainable_parameters()
    try:
        loss = model.training_loss(feats[:2], images, torch.tensor([False, True]),
                                   generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss)
        assert model.controlnet.encoder.conv1.weight.grad is not None
        assert all(p.grad is None for p in model.base.unet.parameters())
        assert all(p.grad is None for p in model.backbone.model.parameters())
        assert len(params) == len(list(model.controlnet.parameters()))
        with torch.no_grad():  # a dropped sample ignores its features entirely
            drop = torch.tensor([True, True])
            a = model.training_loss(feats[:2], images, drop, generator=torch.Generator().manual_seed(0))
            b = model.training_loss(feats[:2] * 3 + 1, images, drop, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a, b)
    finally:
        model.controlnet.zero_grad(set_to_none=True)
        model.controlnet.requires_grad_(False).eval()


def test_reconstruct_input_checks(model, feats):
    with pytest.raises(FeatinvError, match="exactly one"):
        model.reconstruct(progress=False)
    with pytest.raises(FeatinvError, match="seeds"):
        model.reconstruct(features=feats, seeds=[0, 1], steps=1, progress=False)
    with pytest.raises(FeatinvError, match="1280"):
        model.reconstruct(features=torch.zeros(1, 7, 2, 2), steps=1, progress=False)


def test_pooled_perceiver_run_from_images(tmp_path):
    from PIL import Image

    pooled = make_tiny_model(tmp_path, base="pixel", pooled=True, encoder="perceiver")
    assert pooled.guidance_scale == 8.0 and pooled.config["pooled"] is True
    photos = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 30), (10, 10, 200))]
    fmap = pooled.features(photos)
    assert torch.allclose(fmap, fmap[:, :, :1, :1].expand_as(fmap))  # pooled: one vector everywhere
    rec = pooled.reconstruct(images=photos, seeds=[0, 1], steps=2, progress=False)
    assert rec.images.shape == (2, 3, 16, 16)
    run = pooled.save_pretrained(tmp_path / "run")
    loaded = FeatInv.from_pretrained(run)
    assert loaded.pooled and type(loaded.controlnet.encoder).__name__ == "PerceiverEncoder"
    assert torch.equal(loaded.reconstruct(images=photos, seeds=[0, 1], steps=2, progress=False).images, rec.images)


def test_unsaved_pixel_base_is_refused_on_save(model, tmp_path):
    from featinv.diffusion.bases import PixelBase

    base = PixelBase.create(resolution=16, widths=(8, 16), cross_attention_dim=8, attention_head_dim=4)
    unsaved = FeatInv.create(model.backbone, base, encoder_kwargs={"hidden": 8})
    assert unsaved.config["backbone"]["weights"] == "none"  # taken from the Backbone object
    with pytest.raises(FeatinvError, match="never saved"):
        unsaved.save_pretrained(tmp_path / "run")
    base.save_pretrained(tmp_path / "base")
    run = unsaved.save_pretrained(tmp_path / "run")
    assert FeatInv.from_pretrained(run, backbone=model.backbone).base.spec == f"pixel:{(tmp_path / 'base').resolve()}"


def test_progress_bar_path(model, feats):
    rec = model.reconstruct(features=feats[:1], seeds=[0], steps=2, progress=True)
    assert rec.images.shape == (1, 3, 16, 16)
