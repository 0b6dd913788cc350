"""Backbone weights: local .pth/.pt/.safetensors files, clear errors on mismatch, offline 'pretrained'."""

from __future__ import annotations

import urllib.error

import pytest
import timm
import torch
from safetensors.torch import save_file

import featinv
from featinv.errors import FeatinvError
from featinv.plugins.backbones import timm as plugin

SPEC, LAYER, SIZE = "timm:convnext_atto", "stages.2", 64


@pytest.fixture(scope="module")
def trained_state() -> dict[str, torch.Tensor]:
    """A state dict that differs from the seeded random init, as a fine-tuned checkpoint would."""
    torch.manual_seed(123)
    model = timm.create_model("convnext_atto", pretrained=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def expected(trained_state) -> torch.Tensor:
    """The layer's features for a fixed input, computed by plain timm with the checkpoint loaded."""
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    model.load_state_dict(trained_state)
    with torch.no_grad():
        return model.stages[:3](model.stem(torch.ones(1, 3, SIZE, SIZE)))


def features(backbone: featinv.Backbone) -> torch.Tensor:
    with torch.no_grad():
        return backbone.features(torch.ones(1, 3, SIZE, SIZE))


@pytest.mark.parametrize("form", ["pth", "pt-wrapped", "safetensors", "ddp-prefix"])
def test_local_weight_files_load(tmp_path, trained_state, expected, form: str) -> None:
    if form == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(trained_state, str(path))
    elif form == "pt-wrapped":
        path = tmp_path / "w.pt"
        torch.save({"state_dict": trained_state, "epoch": 3}, path)
    elif form == "ddp-prefix":
        path = tmp_path / "w.pth"
        torch.save({f"module.{k}": v for k, v in trained_state.items()}, path)
    else:
        path = tmp_path / "w.pth"
        torch.save(trained_state, path)
    backbone = featinv.backbone(SPEC, layer=LAYER, weights=str(path), input_size=SIZE)
    torch.testing.assert_close(features(backbone), expected)
    assert backbone.weights == str(path)


def test_random_init_differs_from_the_checkpoint(expected) -> None:
    random = featinv.backbone(SPEC, layer=LAYER, weights="none", input_size=SIZE)
    assert not torch.allclose(features(random), expected)


def test_renamed_keys_load_by_order_only_when_every_shape_matches(tmp_path, trained_state, expected) -> None:
    renamed = {f"p{i}": v for i, v in enumerate(trained_state.values())}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    backbone = featinv.backbone(SPEC, layer=LAYER, weights=str(path), input_size=SIZE)
    torch.testing.assert_close(features(backbone), expected)
    swapped = dict(renamed)
    keys = list(swapped)
    swapped[keys[0]], swapped[keys[1]] = swapped[keys[1]], swapped[keys[0]]  # stem conv weight <-> bias
    torch.save(swapped, path)
    with pytest.raises(FeatinvError, match="does not fit timm:convnext_atto"):
        featinv.backbone(SPEC, layer=LAYER, weights=str(path), input_size=SIZE)


def test_a_load_by_position_is_stated_in_one_line_once(capsys) -> None:
    from featinv.features import weights

    weights._SAID.clear()
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    by_name = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    assert weights.apply_state_dict(model, by_name, "same.pth", "tiny") == "name"
    assert capsys.readouterr().err == ""  # names checked: nothing to say
    renamed = {f"p{i}": torch.ones_like(v) for i, v in enumerate(model.state_dict().values())}
    for _ in range(2):
        assert weights.apply_state_dict(model, renamed, "renamed.pth", "tiny") == "order"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["note: renamed.pth names its tensors differently from tiny, so its 4 tensors were loaded by "
                     "position (order and shapes match; names were not checked)"]


def test_mismatched_architecture_is_refused(tmp_path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(path))
    with pytest.raises(FeatinvError, match=r"does not fit timm:convnext_atto: \d+ missing"):
        featinv.backbone(SPEC, weights=str(path), input_size=SIZE)


def test_wrong_shapes_are_refused_by_name(tmp_path, trained_state) -> None:
    state = dict(trained_state)
    state["head.fc.weight"] = torch.zeros(10, state["head.fc.weight"].shape[1])
    path = tmp_path / "ten_classes.pth"
    torch.save(state, path)
    with pytest.raises(FeatinvError, match=r"head\.fc\.weight: \[10, 320\] vs \[1000, 320\]"):
        featinv.backbone(SPEC, weights=str(path), input_size=SIZE)


@pytest.mark.parametrize(("name", "content", "match"), [
    ("garbage.pth", b"not a checkpoint", "cannot read weights file"),
    ("garbage.safetensors", b"\x00\x01", "cannot read weights file"),
    ("weights.txt", b"x", "has suffix .txt"),
])
def test_unreadable_files_are_refused(tmp_path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FeatinvError, match=match):
        featinv.backbone(SPEC, weights=str(path), input_size=SIZE)


def test_missing_file_or_unknown_word(tmp_path) -> None:
    with pytest.raises(FeatinvError, match="neither 'pretrained', 'none' nor an existing file"):
        featinv.backbone(SPEC, weights=str(tmp_path / "nope.pth"), input_size=SIZE)
    with pytest.raises(FeatinvError, match="neither"):
        featinv.backbone(SPEC, weights="imagenet", input_size=SIZE)


def test_timm_pretrained_offline_fails_fast_with_what_to_do(monkeypatch) -> None:
    monkeypatch.setattr(plugin, "_hf_cached", lambda repo_id, filename=None: False)
    monkeypatch.setattr(plugin, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(FeatinvError, match=r"pretrained weights of timm:convnext_atto.*--weights PATH.*--weights none"):
        featinv.backbone(SPEC, weights="pretrained", input_size=SIZE)


def test_torchvision_pretrained_offline_names_the_cache(monkeypatch) -> None:
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(FeatinvError, match=r"torchvision:resnet18 \(URLError.*checkpoints.*--weights none"):
        featinv.backbone("torchvision:resnet18", weights="pretrained", input_size=SIZE)


def test_torchvision_pretrained_uses_the_downloaded_state(monkeypatch) -> None:
    """The real 'pretrained' path, with torchvision's downloader replaced by an in-memory checkpoint."""
    import torchvision.models as tvm
    import torchvision.models._api as api

    torch.manual_seed(7)
    published = tvm.resnet18().state_dict()
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *args, **kwargs: published)
    backbone = featinv.backbone("torchvision:resnet18", weights="pretrained", input_size=SIZE)
    assert torch.equal(backbone.model.conv1.weight, published["conv1.weight"])
    assert backbone.layer == "layer4" and backbone.weights == "pretrained"


def test_torchvision_vit_pretrained_at_another_size_resamples_positions(monkeypatch) -> None:
    import torchvision.models as tvm
    import torchvision.models._api as api

    torch.manual_seed(8)
    published = tvm.vit_b_16().state_dict()  # trained at 224: 1 + 14x14 positions
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *args, **kwargs: published)
    backbone = featinv.backbone("torchvision:vit_b_16", weights="pretrained", input_size=64)
    assert backbone.model.encoder.pos_embedding.shape == (1, 1 + 4 * 4, 768)
    assert torch.equal(backbone.model.class_token, published["class_token"])
    assert (backbone.info.channels, backbone.info.grid) == (768, (4, 4))
