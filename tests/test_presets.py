"""Presets (the paper's setups by name), torchvision weights by name, and `featinv train --dry-run`.

Nothing is downloaded: the weights selection is checked on the enum it picks, a preset's backbone is built
with random weights (shapes do not depend on them), and the CLI runs use tiny models.
"""

from __future__ import annotations

import json

import pytest
import torch
import torchvision.models as tvm

import featinv
from featinv import presets
from featinv.errors import FeatinvError
from featinv.plugins.backbones.torchvision import select_weights
from featinv.training.config import TrainConfig
from tests.cli_run import exit_code
from tests.fixtures_model import TINY_BACKBONE, TINY_INPUT_SIZE, make_tiny_images, make_tiny_pixel_base

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("preset_assets")
    return {"base": make_tiny_pixel_base(root), "images": make_tiny_images(root / "images", count=5, size=40)}


# ------------------------------------------------------------------------------------------------ presets
def test_paper_presets_hold_the_paper_values() -> None:
    resnet, convnext, swin = (presets.get(f"paper:{m}") for m in ("resnet50", "convnext", "swinv2"))
    assert (resnet.backbone, resnet.weights, resnet.layer, resnet.input_size) == (
        "torchvision:resnet50", "IMAGENET1K_V1", "layer4", 224)
    assert (convnext.backbone, convnext.layer, convnext.input_size) == (
        "timm:convnext_base.fb_in22k_ft_in1k", "stages.3", 288)
    assert (swin.layer, swin.input_size) == ("norm", 384)
    for preset in (resnet, convnext, swin):
        assert (preset.lr, preset.batch_size, preset.epochs, preset.mixed_precision) == (1e-5, 8, 3.0, "no")
        assert (preset.guidance_scale, preset.steps, preset.resize_mode, preset.base) == (
            1.75, 50, "bilinear", "sd:lambdalabs/miniSD-diffusers")
        assert preset.name not in preset.evaluate_with and len(preset.evaluate_with) == 2
    pooled = presets.get("paper:convnext-pooled")
    assert pooled.pooled and pooled.guidance_scale == 8.0
    assert set(presets.names()) >= {"paper:resnet50", "paper:convnext", "paper:swinv2", "paper:swinv2-pooled"}
    assert featinv.presets.get("paper:swinv2") is swin and featinv.Preset is presets.Preset  # the flat API


def test_unknown_preset_is_one_line_with_close_names() -> None:
    with pytest.raises(FeatinvError, match="paper:convnext"):
        presets.get("paper:convnxt")


def test_train_config_from_preset_records_it_and_explicit_values_win(tmp_path) -> None:
    config = TrainConfig.from_preset("paper:resnet50", out=tmp_path, data=tmp_path, lr=2e-5)
    assert (config.backbone, config.backbone_weights, config.layer, config.input_size) == (
        "torchvision:resnet50", "IMAGENET1K_V1", "layer4", 224)
    assert config.lr == 2e-5 and config.max_grad_norm is None and config.guidance_scale == 1.75
    assert config.to_json()["preset"] == "paper:resnet50"
    assert featinv.TrainConfig(out=tmp_path).to_json()["preset"] is None


def test_plugins_can_register_presets(tmp_path) -> None:
    preset = presets.Preset(name="test:tiny", description="a tiny test preset", backbone=TINY_BACKBONE,
                            input_size=TINY_INPUT_SIZE)
    presets.register(preset)
    try:
        assert presets.get("test:tiny") is preset
        with pytest.raises(FeatinvError, match="twice"):
            presets.register(preset)
    finally:
        presets._REGISTERED.pop("test:tiny")


# ------------------------------------------------------------------------------------- weights by name
def test_torchvision_weights_are_selected_by_enum_name_without_loading() -> None:
    assert select_weights("resnet50", "pretrained") is tvm.ResNet50_Weights.IMAGENET1K_V2  # torchvision's DEFAULT
    assert select_weights("resnet50", "IMAGENET1K_V1") is tvm.ResNet50_Weights.IMAGENET1K_V1
    assert select_weights("resnet50", "imagenet1k_v1") is tvm.ResNet50_Weights.IMAGENET1K_V1
    with pytest.raises(FeatinvError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        select_weights("resnet50", "IMAGENET1K_V9")


def test_resnet50_preset_builds_2048x7x7_with_the_v1_enum(monkeypatch) -> None:
    """The preset's backbone at its size, with the V1 enum handed to torchvision (the load itself is stubbed)."""
    asked = []

    def fake_get_model(name, weights=None, **kwargs):
        asked.append(weights)
        torch.manual_seed(0)
        return tvm.resnet50(weights=None)

    monkeypatch.setattr(tvm, "get_model", fake_get_model)
    preset = presets.get("paper:resnet50")
    bb = featinv.backbone(preset.backbone, layer=preset.layer, weights=preset.weights, input_size=preset.input_size)
    assert asked == [tvm.ResNet50_Weights.IMAGENET1K_V1]
    assert bb.weights == "IMAGENET1K_V1"  # recorded by name, so a saved run rebuilds the same weights
    assert (bb.info.channels, bb.info.grid, bb.info.input_size) == (2048, (7, 7), (224, 224))
    assert bb.preprocessing.interpolation == "bilinear"


@pytest.mark.parametrize(("name", "expected"), [("paper:convnext", (1024, (9, 9))), ("paper:swinv2", (1024, (12, 12)))])
def test_timm_presets_resolve_to_the_paper_grids(name, expected) -> None:
    """Built on the meta device: shapes only, no weights, no download."""
    preset = presets.get(name)
    import timm

    with torch.device("meta"):
        model = timm.create_model(preset.backbone.split(":", 1)[1], pretrained=False,
                                  **({"img_size": preset.input_size} if "swin" in name else {}))
    size = preset.input_size
    from torch.utils.flop_counter import FlopCounterMode  # noqa: F401 - meta tensors run shape-only

    with torch.no_grad():
        out = model.forward_features(torch.empty(1, 3, size, size, device="meta"))
    shape = tuple(out.shape[1:]) if out.shape[1] == expected[0] else (out.shape[3], out.shape[1], out.shape[2])
    assert (shape[0], tuple(shape[1:])) == expected


# ---------------------------------------------------------------------------------------------- the CLI
def test_presets_command_lists_every_value(capsys) -> None:
    assert exit_code(["presets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["paper:resnet50"]["weights"] == "IMAGENET1K_V1"
    assert exit_code(["presets", "paper:convnext"]) == 0
    assert "288" in capsys.readouterr().out
    assert exit_code(["presets", "paper:nope"]) == 2


def test_train_dry_run_with_a_preset_writes_nothing_and_explicit_flags_win(assets, tmp_path, capsys) -> None:
    preset = presets.Preset(name="test:dry", description="tiny", backbone="timm:convnext_atto", input_size=96,
                            base=f"pixel:{assets['base']}", lr=3e-4, batch_size=4, epochs=2.0)
    presets.register(preset)
    out = tmp_path / "run"
    try:
        code = exit_code(["train", "--preset", "test:dry", "--data", str(assets["images"]), "--out", str(out),
                     "--batch-size", "2", "--encoder-option", "hidden=8", "--dry-run"])
    finally:
        presets._REGISTERED.pop("test:dry")
    text = capsys.readouterr().out
    assert code == 0, text
    assert not out.exists()
    assert "test:dry" in text and "0.0003" in text   # the preset's lr
    assert "320×3×3" in text                          # convnext_atto at 96 px: 320 channels on a 3x3 grid
    assert "global batch" in text and "2 (2 ×" in text  # --batch-size 2 beat the preset's 4
    assert "steps per epoch" in text


# --------------------------------------------------------------------------------------------- model card
def test_model_card_lists_the_model_the_training_and_labelled_metrics(tmp_path) -> None:
    from featinv.report.card import write_model_card

    (tmp_path / "config.json").write_text(json.dumps({
        "backbone": {"spec": "torchvision:resnet50", "weights": "IMAGENET1K_V1", "layer": "layer4",
                     "input_size": [224, 224], "channels": 2048, "grid": [7, 7]},
        "base": {"spec": "sd:lambdalabs/miniSD-diffusers", "resolution": 256}, "pooled": False, "encoder": "conv"}))
    (tmp_path / "train_config.json").write_text(json.dumps({"preset": "paper:resnet50", "lr": 1e-5, "data": "/in"}))
    (tmp_path / "eval" / "val").mkdir(parents=True)
    (tmp_path / "eval" / "val" / "metrics.json").write_text(json.dumps({"summary": {
        "n_images": 10, "cosine_sim": {"mean": 0.41}, "cosine_sim_all_positions": {"median": 0.39},
        "top5": 0.87, "top1": 0.63}}))
    card = write_model_card(tmp_path).read_text()
    assert card.startswith("---\nlibrary_name: featinv")
    assert "base_model: lambdalabs/miniSD-diffusers" in card
    assert "2048×7×7" in card and "IMAGENET1K_V1" in card and "`paper:resnet50`" in card
    assert "| val | 10 | 0.410 | 0.390 | 87.0% | 63.0% |" in card
    assert "median of all superpixels" in card


# ------------------------------------------------------------------------------- the preset's decomposer
def _capture_decomposer(monkeypatch) -> list[str]:
    """Make ``fit_concepts`` stop at the decomposer it chose (no features extracted)."""
    import featinv.concepts.fit as fit

    chosen: list[str] = []

    def stop(method, **_):
        chosen.append(method)
        raise FeatinvError("stop after choosing the decomposer")

    monkeypatch.setattr(fit, "create_decomposer", stop)
    return chosen


def test_paper_presets_fit_concepts_with_the_reference_mcd(monkeypatch) -> None:
    assert {presets.get(name).decomposer for name in presets.names() if name.startswith("paper:")} == {"mcd-reference"}
    assert presets.Preset(name="x", description="x", backbone=TINY_BACKBONE).decomposer == "mcd"
    assert ("decomposer", "mcd-reference") in presets.get("paper:convnext").rows()
    from featinv.concepts.fit import fit_concepts

    chosen = _capture_decomposer(monkeypatch)
    for kwargs in ({"preset": "paper:convnext"}, {"preset": "paper:convnext", "method": "nmf"}, {}):
        with pytest.raises(FeatinvError, match="stop after"):
            fit_concepts(TINY_BACKBONE, data="unused", **kwargs)
    assert chosen == ["mcd-reference", "nmf", "mcd"]
    with pytest.raises(FeatinvError, match="unknown preset"):
        fit_concepts(TINY_BACKBONE, data="unused", method="mcd", preset="paper:nope")


def test_concepts_fit_cli_takes_the_preset_decomposer_unless_given(monkeypatch, tmp_path, capsys) -> None:
    chosen = _capture_decomposer(monkeypatch)
    args = ["concepts", "fit", "--backbone", TINY_BACKBONE, "--data", str(tmp_path), "--out", str(tmp_path / "c")]
    assert exit_code([*args, "--preset", "paper:swinv2"]) == 2
    assert exit_code([*args, "--preset", "paper:swinv2", "--decomposer", "sae"]) == 2
    assert chosen == ["mcd-reference", "sae"]
    capsys.readouterr()
    assert exit_code([*args, "--preset", "paper:nope"]) == 2
    error = capsys.readouterr().err.strip()
    assert "unknown preset 'paper:nope'" in error and len(error.splitlines()) == 1
    assert exit_code(["presets", "paper:resnet50"]) == 0 and "mcd-reference" in capsys.readouterr().out


def test_concepts_folder_records_the_preset(assets, tmp_path) -> None:
    from featinv.concepts.base import load_decomposer
    from featinv.concepts.fit import fit_concepts

    lite0 = featinv.backbone(TINY_BACKBONE, weights="none", input_size=TINY_INPUT_SIZE)
    fit_concepts(lite0, data=assets["images"], method="mcd", n_concepts=2, out=tmp_path / "c", progress=False,
                 preset="paper:convnext")
    loaded = load_decomposer(tmp_path / "c")
    assert loaded.name == "mcd" and loaded.meta["preset"] == "paper:convnext"
