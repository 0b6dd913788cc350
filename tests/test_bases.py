"""Diffusion bases: the real `sd` loading code on a tiny saved SD folder, the `pixel` base, schedulers, errors."""

from __future__ import annotations

import pytest
import torch

from featinv.diffusion.bases import NEGATIVE_PROMPT, PROMPT, PixelBase, StableDiffusionBase, load_base
from featinv.errors import FeatinvError
from featinv.registry import list_bases
from tests.fixtures_model import make_tiny_pixel_base, make_tiny_sd


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return make_tiny_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def sd_base(sd_dir):
    return load_base(f"sd:{sd_dir}")


def test_bases_registered():
    assert {"sd", "pixel"} <= set(list_bases())


def test_sd_folder_loads_with_shapes(sd_base, sd_dir):
    assert isinstance(sd_base, StableDiffusionBase)
    assert (sd_base.resolution, sd_base.latent_channels, sd_base.latent_size) == (16, 4, 8)
    assert sd_base.first_block_width == 8 and sd_base.prediction_type == "epsilon"
    assert not any(p.requires_grad for p in sd_base.unet.parameters())
    assert isinstance(load_base(str(sd_dir)), StableDiffusionBase)  # bare folder: kind detected


def test_sd_prompt_embeddings_are_the_cached_clip_outputs(sd_base, sd_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(sd_dir / "tokenizer")
    text = CLIPTextModel.from_pretrained(sd_dir / "text_encoder").eval()
    ids = tok([PROMPT, NEGATIVE_PROMPT], padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = text(ids)[0]
    emb = sd_base.prompt_embeddings(torch.tensor([False, True, False]))
    torch.testing.assert_close(emb[0], expected[0])
    torch.testing.assert_close(emb[1], expected[1])
    assert not torch.equal(emb[0], emb[1]) and torch.equal(emb[0], emb[2])
    assert sd_base.prompt_embeddings(torch.tensor([False])).data_ptr() != 0  # no text encoder call needed
    assert not hasattr(sd_base, "text_encoder")


def test_sd_encode_prompts_is_the_path_of_the_fixed_embeddings(sd_base):
    fresh = sd_base.encode_prompts([NEGATIVE_PROMPT, PROMPT])  # the text encoder is read again on demand
    assert fresh.shape[0] == 2 and fresh.device == sd_base.device
    assert torch.equal(fresh[0], sd_base.prompt_embeds[1]) and torch.equal(fresh[1], sd_base.prompt_embeds[0])


def test_sd_encode_decode_shapes_and_range(sd_base):
    images = torch.rand(3, 3, 20, 20)  # resized to the base resolution
    latents = sd_base.encode(images, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (3, 4, 8, 8)
    decoded = sd_base.decode(latents, chunk_size=2)
    assert decoded.shape == (3, 3, 16, 16) and decoded.min() >= 0 and decoded.max() <= 1
    torch.testing.assert_close(decoded, torch.cat([sd_base.decode(latents[:1]), sd_base.decode(latents[1:])]))


@pytest.mark.parametrize("name", ["ddim", "dpm++", "unipc", "ddpm"])
def test_schedulers(sd_base, name):
    sched = sd_base.make_scheduler(name)
    sched.set_timesteps(5)
    assert len(sched.timesteps) == 5
    assert sched.config.num_train_timesteps == sd_base.num_train_timesteps


def test_unknown_scheduler(sd_base):
    with pytest.raises(FeatinvError, match="did you mean 'ddim'"):
        sd_base.make_scheduler("ddimm")


def test_hub_id_offline_says_how_to_use_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FeatinvError) as info:
        load_base("sd:lambdalabs/miniSD-diffusers")
    message = str(info.value)
    assert "sd:DIR" in message and "local folder" in message and "\n" not in message


def test_bad_sd_paths(tmp_path):
    with pytest.raises(FeatinvError, match="does not exist"):
        load_base("sd:./no/such/folder")
    with pytest.raises(FeatinvError, match="not a diffusers Stable Diffusion folder"):
        load_base(f"sd:{tmp_path}")
    broken = tmp_path / "broken"
    (broken / "unet").mkdir(parents=True)
    (broken / "model_index.json").write_text("{}")
    with pytest.raises(FeatinvError, match="cannot load Stable Diffusion folder"):
        load_base(f"sd:{broken}")


def test_pixel_base_round_trip_and_training_loss(tmp_path):
    folder = make_tiny_pixel_base(tmp_path)
    base = load_base(f"pixel:{folder}")
    assert isinstance(base, PixelBase) and base.vae is None
    assert (base.resolution, base.latent_channels, base.latent_size) == (16, 3, 16)
    assert base.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    again = PixelBase.from_pretrained(folder)
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 500])
    emb = base.prompt_embeddings(torch.tensor([False, True]))
    with torch.no_grad():
        assert torch.equal(base.unet(x, t, emb).sample, again.unet(x, t, again.prompt_embeddings(torch.tensor([False, True]))).sample)
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(base.decode(base.encode(images)), images)
    params = base.trainable_parameters()
    loss = base.training_loss(images, torch.tensor([False, True]), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and base.prompt_embeds.grad is not None and base.prompt_embeds.grad.abs().sum() > 0
    assert all(p.grad is not None for p in params[:3])


def test_pixel_errors(tmp_path):
    with pytest.raises(FeatinvError, match="needs the folder"):
        load_base("pixel")
    with pytest.raises(FeatinvError, match="does not exist"):
        load_base(f"pixel:{tmp_path / 'missing'}")
    with pytest.raises(FeatinvError, match="pixel base marker"):
        load_base(f"pixel:{tmp_path}")
    with pytest.raises(FeatinvError, match="at least two block widths"):
        PixelBase.create(widths=(8,))
