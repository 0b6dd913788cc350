"""The authors' sampler controls: control strength and guess mode (their ``process()``).

Defaults are today's sampler bit for bit; the residual scales match a hand computation; guess mode's
unconditional branch is the plain UNet.
"""

from __future__ import annotations

import pytest
import torch

from featinv.diffusion.controlnet import ControlScales, controlled_unet
from featinv.diffusion.sampler import guided_prediction
from featinv.errors import FeatinvError
from tests.fixtures_model import make_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("controls"))


def test_scales_match_the_authors_formula() -> None:
    assert ControlScales().scales(13) is None
    assert ControlScales(0.5).scales(3) == [0.5, 0.5, 0.5]
    by_hand = [0.7 * (0.825 ** float(12 - i)) for i in range(13)]  # strength * 0.825^(12-i), i = 0..12
    assert ControlScales(0.7, guess_mode=True).scales(13) == by_hand
    assert ControlScales(1.0, guess_mode=True).scales(13)[-1] == 1.0  # the mid block is not decayed
    with pytest.raises(FeatinvError, match="control strength"):
        ControlScales(-1.0)


def _inputs(model, n: int = 2):
    torch.manual_seed(0)
    latent = (model.base.latent_channels, model.base.latent_size, model.base.latent_size)
    latents = torch.randn(n, *latent)
    feats = model.features(torch.rand(n, 3, 64, 64))
    cond = model.base.prompt_embeddings(torch.zeros(n, dtype=torch.bool))
    uncond = model.base.prompt_embeddings(torch.ones(n, dtype=torch.bool))
    return latents, torch.tensor(500), model._conditioning(feats), cond, uncond


def test_strength_scales_every_residual(model) -> None:
    latents, t, feats, cond, _ = _inputs(model)
    unet, net = model.base.unet, model.controlnet
    with torch.no_grad():
        down, mid = net.residuals(latents, t, cond, feats)
        scaled = unet(latents, t, encoder_hidden_states=cond, down_block_additional_residuals=[r * 0.3 for r in down],
                      mid_block_additional_residual=mid * 0.3).sample
        got = controlled_unet(unet, net, latents, t, cond, feats, ControlScales(0.3))
        zero = controlled_unet(unet, net, latents, t, cond, feats, ControlScales(0.0))
        plain = unet(latents, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(got, scaled)
    torch.testing.assert_close(zero, plain)


def test_guess_mode_gives_the_unconditional_branch_no_features(model) -> None:
    latents, t, feats, cond, uncond = _inputs(model)
    unet, net = model.base.unet, model.controlnet
    control = ControlScales(1.0, guess_mode=True)
    with torch.no_grad():
        got = guided_prediction(unet, net, latents, t, feats, cond, uncond, 2.0, control)
        plain_uncond = unet(latents, t, encoder_hidden_states=uncond).sample
        cond_pred = controlled_unet(unet, net, latents, t, cond, feats, control)
    torch.testing.assert_close(got, plain_uncond + 2.0 * (cond_pred - plain_uncond), rtol=1e-4, atol=1e-5)


def test_defaults_are_bit_identical_to_the_paper_sampler(model) -> None:
    feats = model.features(torch.rand(2, 3, 64, 64))
    kwargs = dict(features=feats, seeds=[0, 1], steps=3, progress=False, fidelity=False)
    today = model.reconstruct(**kwargs)
    explicit = model.reconstruct(**kwargs, control_strength=1.0, guess_mode=False)
    assert torch.equal(today.images, explicit.images)
    assert "control_strength" not in today.meta
    changed = model.reconstruct(**kwargs, control_strength=0.5, guess_mode=True)
    assert changed.meta["guess_mode"] is True and not torch.equal(changed.images, today.images)
