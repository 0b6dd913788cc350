"""A diffusion base whose configs disagree on its image size is refused with one line naming --resolution."""

from __future__ import annotations

import json

import pytest

from featinv.diffusion.bases import load_base
from featinv.errors import FeatinvError
from tests.fixtures_model import make_tiny_sd

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rewritten_sd(tmp_path_factory):
    """A tiny SD folder (16 px: UNet 8 × VAE factor 2) whose unet/config.json sample_size was rewritten to 16."""
    folder = make_tiny_sd(tmp_path_factory.mktemp("base_checks"))
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["sample_size"] = 16
    config_path.write_text(json.dumps(config))
    return folder


def test_consistent_base_loads(tmp_path) -> None:
    base = load_base(f"sd:{make_tiny_sd(tmp_path)}")
    assert (base.resolution, base.latent_size) == (16, 8)


def test_mismatched_sample_size_is_refused_and_resolution_overrides(rewritten_sd) -> None:
    with pytest.raises(FeatinvError, match=r"sample_size 16 means 32 px, but vae/config.json says 16 px; pass --resolution"):
        load_base(f"sd:{rewritten_sd}")
    base = load_base(f"sd:{rewritten_sd}", resolution=16)
    assert (base.resolution, base.latent_size) == (16, 8)
    with pytest.raises(FeatinvError, match="multiple of 4"):
        load_base(f"sd:{rewritten_sd}", resolution=18)
