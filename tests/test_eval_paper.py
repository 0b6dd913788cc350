"""Evaluating as the paper does: judges at their own input size, both cosine aggregations, bilinear resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featinv.errors import FeatinvError
from featinv.evaluation.cosine import all_positions_summary, decode_positions, encode_positions, pooled_median
from featinv.evaluation.judges import load_judge, parse_judge
from featinv.features.similarity import cosine_median, cosine_positions

pytestmark = pytest.mark.usefixtures("one_thread")


def test_judges_take_their_size_from_the_spec_or_a_preset() -> None:
    assert parse_judge("timm:convnext_base.fb_in22k_ft_in1k@288") == {
        "spec": "timm:convnext_base.fb_in22k_ft_in1k", "weights": "pretrained", "input_size": 288}
    assert parse_judge("paper:resnet50") == {"spec": "torchvision:resnet50", "weights": "IMAGENET1K_V1",
                                             "input_size": 224}
    assert parse_judge("paper:convnext", "none")["input_size"] == 288
    assert parse_judge("timm:resnet50")["input_size"] is None
    with pytest.raises(FeatinvError, match="@288"):
        parse_judge("timm:convnext_base@big")


def test_a_judge_at_288_sees_288_pixels() -> None:
    judge = load_judge("timm:convnext_atto@96", "none")
    assert judge.info.input_size == (96, 96) and judge.info.grid == (3, 3)


def test_both_cosine_aggregations_match_a_hand_computation() -> None:
    """Two images, 2x2 positions of 2 channels, cosines chosen by hand."""
    orig = torch.zeros(2, 2, 2, 2)
    rec = torch.zeros(2, 2, 2, 2)
    orig[:, 0] = 1.0  # every original vector is (1, 0)
    angles = torch.tensor([[0.0, 60.0, 90.0, 180.0], [0.0, 0.0, 0.0, 60.0]]).deg2rad().view(2, 2, 2)
    rec[:, 0], rec[:, 1] = angles.cos(), angles.sin()
    # image 0 cosines: 1, .5, 0, -1 -> median .25; image 1: 1, 1, 1, .5 -> median 1
    torch.testing.assert_close(cosine_median(orig, rec), torch.tensor([0.25, 1.0]), atol=1e-6, rtol=0)
    positions = cosine_positions(orig, rec)
    assert positions.shape == (2, 4)
    # all eight: -1, 0, .5, .5, 1, 1, 1, 1 -> median (.5 + 1) / 2 = .75; the per-image reading: (.25 + 1) / 2
    assert pooled_median(positions) == pytest.approx(0.75, abs=1e-6)
    rows = [{"cosine": 0.25, "cosine_positions": encode_positions(positions[0])},
            {"cosine": 1.0, "cosine_positions": encode_positions(positions[1])}]
    summary = all_positions_summary(rows)
    assert summary["median"] == pytest.approx(0.75, abs=5e-4) and summary["n_positions"] == 8
    np.testing.assert_allclose(decode_positions(rows[0]["cosine_positions"]), positions[0].numpy(), atol=5e-4)
    assert all_positions_summary([{"cosine": 0.3}]) is None  # an index from before: nothing to pool


def test_bilinear_resize_mode_overrides_the_model_interpolation() -> None:
    judge = load_judge("timm:convnext_atto@96", "none")
    assert judge.preprocessing.interpolation == "bicubic"
    images = torch.rand(1, 3, 40, 40)
    bilinear = torch.nn.functional.interpolate(images, size=(96, 96), mode="bilinear", align_corners=False,
                                               antialias=True)
    mean = torch.tensor(judge.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(judge.preprocessing.std).view(1, 3, 1, 1)
    torch.testing.assert_close(judge.normalize(images, resize="bilinear"), (bilinear - mean) / std)
    assert not torch.equal(judge.normalize(images), judge.normalize(images, resize="bilinear"))
    assert torch.equal(judge.normalize(images), judge.normalize(images, resize="model"))
    with pytest.raises(FeatinvError, match="resize mode"):
        judge.normalize(images, resize="lanczos")


# ----------------------------------------------------------------------------------------- end to end
def test_eval_cli_with_a_preset_resizes_bilinearly_judges_at_its_size_and_reports_both_cosines(tmp_path) -> None:
    """`featinv eval --preset` (a test preset: the paper's choices on tiny models): bilinear resize, a judge
    at 96 px, both cosine readings in metrics.json and metrics.md, the control settings recorded, the card."""
    import json

    from featinv import presets
    from featinv.cli import main
    from tests.fixtures_model import make_tiny_images, make_tiny_run

    run = make_tiny_run(tmp_path)
    data = tmp_path / "val"
    make_tiny_images(data / "cat", count=2)
    presets.register(presets.Preset(name="test:eval", description="tiny", backbone="timm:tf_efficientnet_lite0",
                                    steps=2, per_class=2, evaluate_with=("timm:convnext_atto@96",)))
    try:
        args = ["eval", "--run", str(run), "--data", str(data), "--preset", "test:eval", "--fid", "none",
                "--evaluate-weights", "none", "--control-strength", "0.5", "--quiet", "--json"]
        try:
            main(args)
        except SystemExit as exc:
            assert not exc.code
    finally:
        presets._REGISTERED.pop("test:eval")
    out = run / "eval" / "val"
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["resize_mode"] == "bilinear" and summary["steps"] == 2 and summary["n_images"] == 2
    assert summary["control_strength"] == 0.5 and summary["guess_mode"] is False
    assert list(summary["cross_model"]) == ["timm:convnext_atto@96"]
    assert summary["cosine_sim_all_positions"]["n_positions"] == 2 * 2 * 2  # 2 images, 2x2 grid at 64 px
    assert "cosine-sim (all positions)" in (out / "metrics.md").read_text()
    assert "| val | 2 |" in (run / "README.md").read_text()  # the model card now carries the metrics
