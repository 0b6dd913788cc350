"""Feature encoders: shapes, zero-initialised output, pooled input, save/load, registry, bad input."""

from __future__ import annotations

import pytest
import torch

from featinv.diffusion.encoders import build_encoder, load_encoder
from featinv.errors import FeatinvError
from featinv.registry import list_encoders

SMALL = {"conv": {"hidden": 8}, "perceiver": {"dim": 16, "num_latents": 4, "heads": 2, "depth": 1}}


def _perturb(module: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def test_builtin_encoders_are_registered():
    assert {"conv", "perceiver"} <= set(list_encoders())
    with pytest.raises(FeatinvError, match="unknown encoder"):
        build_encoder("convv", 6, 8, (8, 8))


@pytest.mark.parametrize("name", ["conv", "perceiver"])
def test_output_on_latent_grid_and_zero_at_init(name):
    enc = build_encoder(name, 6, 8, (8, 8), **SMALL[name])
    out = enc(torch.randn(3, 6, 2, 3))
    assert out.shape == (3, 8, 8, 8)
    assert torch.count_nonzero(out) == 0  # zero-initialised last layer: a fresh model changes nothing


@pytest.mark.parametrize("name", ["conv", "perceiver"])
def test_pooled_vector_equals_broadcast_map(name):
    enc = build_encoder(name, 6, 8, (8, 8), **SMALL[name])
    _perturb(enc)
    vec = torch.randn(2, 6)
    as_map = vec[:, :, None, None].expand(-1, -1, 2, 2)
    out_vec = enc(vec)
    assert out_vec.shape == (2, 8, 8, 8) and out_vec.abs().sum() > 0
    if name == "conv":  # bilinear upsampling of a constant map is the constant
        torch.testing.assert_close(out_vec, enc(as_map))


def test_conv_matches_paper_structure():
    enc = build_encoder("conv", 2048, 320, (32, 32))
    assert (enc.conv1.in_channels, enc.conv1.out_channels) == (2048, 512)
    assert (enc.conv2.in_channels, enc.conv2.out_channels) == (512, 512)
    assert (enc.conv_out.out_channels, enc.conv_out.kernel_size) == (320, (3, 3))


@pytest.mark.parametrize("name", ["conv", "perceiver"])
def test_save_load_round_trip(tmp_path, name):
    enc = build_encoder(name, 6, 8, (4, 4), **SMALL[name])
    _perturb(enc)
    enc.save(tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    assert type(loaded) is type(enc) and loaded.init_kwargs() == enc.init_kwargs()
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(enc(x), loaded(x))


def test_bad_inputs_are_clear():
    enc = build_encoder("conv", 6, 8, (4, 4), hidden=8)
    with pytest.raises(FeatinvError, match="expects 6 feature channels"):
        enc(torch.randn(1, 5, 2, 2))
    with pytest.raises(FeatinvError, match=r"\[B,C,h,w\]"):
        enc(torch.randn(1, 6, 2))
    with pytest.raises(FeatinvError, match="bad options"):
        build_encoder("conv", 6, 8, (4, 4), width=3)
    with pytest.raises(FeatinvError, match="does not exist"):
        load_encoder("/nonexistent/encoder")
