"""The feature-consistency loss: W=0 is the paper's loss bit for bit, its gradient reaches only the ControlNet,
W>0 changes the loss and still resumes exactly, settings reach the run config and the resume check, bad
values are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from featinv.diffusion.consistency import DEFAULT_MAX_T, FeatureConsistency
from featinv.errors import FeatinvError
from featinv.training.checkpoint import load_checkpoint
from featinv.training.loop import train
from featinv.training.tasks import FeatInvTask
from tests.cli_run import exit_code
from tests.fixtures_model import make_tiny_images, make_tiny_model, make_tiny_pixel_base
from tests.test_train import featinv_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("consistency_assets")
    return {"base": make_tiny_pixel_base(root), "images": make_tiny_images(root / "images", count=4, size=40)}


def _batch(model, n: int = 4):
    images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    return model.features(images), images


def _params(out):
    return load_checkpoint(out / "checkpoints").params


def test_zero_weight_is_the_papers_loss_and_training_bit_for_bit(assets, tmp_path, monkeypatch):
    model = make_tiny_model(tmp_path)
    features, images = _batch(model)
    drop = torch.tensor([False, True, False, False])
    paper = model.training_loss(features, images, drop, generator=torch.Generator().manual_seed(0))
    for off in (None, FeatureConsistency(), FeatureConsistency(weight=0.0, max_t=10, fraction=0.5)):
        got = model.training_loss(features, images, drop, generator=torch.Generator().manual_seed(0), consistency=off)
        assert torch.equal(got, paper)

    kw = {"max_steps": 3, "lr": 1e-3, "checkpoint_every": 100, "seed": 2}
    # the loss as the task called it before the option existed (no consistency argument at all)
    monkeypatch.setattr(FeatInvTask, "loss", lambda self, inputs, drop, generator: self.model.training_loss(
        inputs["features"], inputs["target"], drop, generator=generator))
    before = _params(train(featinv_config(assets, tmp_path / "before", **kw)))
    monkeypatch.undo()
    default = _params(train(featinv_config(assets, tmp_path / "default", **kw)))
    zero = _params(train(featinv_config(assets, tmp_path / "zero", consistency_weight=0.0, consistency_max_t=5,
                                        consistency_fraction=0.25, **kw)))
    assert before.keys() == default.keys() == zero.keys()
    for name in before:
        assert torch.equal(before[name], default[name]) and torch.equal(before[name], zero[name]), name


@pytest.mark.parametrize("base", ["pixel", "sd"])
def test_the_terms_gradient_reaches_only_the_controlnet(tmp_path, base):
    """Through x̂₀, the decoder (latent bases: the VAE) and the backbone, yet only trainable parameters get .grad."""
    model = make_tiny_model(tmp_path, base=base)
    trainable = model.trainable_parameters()
    features, images = _batch(model)
    drop = torch.zeros(4, dtype=torch.bool)
    mse = model.training_loss(features, images, drop, generator=torch.Generator().manual_seed(0))
    total = model.training_loss(features, images, drop, generator=torch.Generator().manual_seed(0),
                                consistency=FeatureConsistency(weight=1.0, max_t=1000))
    term = total - mse.detach()
    assert float(term.detach()) > 0
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    frozen = [*model.backbone.model.parameters(), *(p for m in model.base.modules() for p in m.parameters())]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)


def test_selection_skips_dropped_and_noisy_samples_and_draws_the_fraction():
    t = torch.tensor([0, 10, 399, 400, 999, 5])
    drop = torch.tensor([False, False, False, False, False, True])
    chosen = FeatureConsistency(weight=1.0).selected(t, drop, torch.Generator().manual_seed(0))
    assert chosen.tolist() == [True, True, True, False, False, False]
    t = torch.zeros(2000, dtype=torch.long)
    half = FeatureConsistency(weight=1.0, fraction=0.5).selected(t, torch.zeros(2000, dtype=torch.bool),
                                                                  torch.Generator().manual_seed(0))
    assert 900 < int(half.sum()) < 1100


def test_no_selected_sample_adds_nothing(tmp_path):
    model = make_tiny_model(tmp_path)
    features, images = _batch(model)
    drop = torch.ones(4, dtype=torch.bool)  # every conditioning dropped: nothing to compare against
    paper = model.training_loss(features, images, drop, generator=torch.Generator().manual_seed(0))
    got = model.training_loss(features, images, drop, generator=torch.Generator().manual_seed(0),
                              consistency=FeatureConsistency(weight=3.0, max_t=1000))
    assert torch.equal(got, paper)


def _interrupted_after(config, steps: int):
    """Train until ``steps`` optimizer steps are done, then stop as Ctrl-C would; returns the run folder."""
    def stop(step, _loss):
        if step == steps:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=stop)
    return config.out


def test_positive_weight_changes_the_loss_and_resumes_exactly(assets, tmp_path):
    kw = {"max_steps": 4, "lr": 1e-3, "checkpoint_every": 100, "seed": 3, "consistency_weight": 2.0,
          "consistency_max_t": 1000, "consistency_fraction": 0.75}
    losses: dict[str, list[float]] = {"on": [], "off": []}
    full = train(featinv_config(assets, tmp_path / "full", **kw), on_step=lambda s, v: losses["on"].append(v))
    train(featinv_config(assets, tmp_path / "off", **{**kw, "consistency_weight": 0.0}),
          on_step=lambda s, v: losses["off"].append(v))
    assert losses["on"][0] != losses["off"][0]

    part = _interrupted_after(featinv_config(assets, tmp_path / "part", **kw), steps=2)
    with pytest.raises(FeatinvError, match=r"settings changed \(consistency_weight\)"):
        train(featinv_config(assets, part, **{**kw, "consistency_weight": 1.0}, resume=True))
    train(featinv_config(assets, part, **kw, resume=True))
    a, b = _params(full), _params(part)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_settings_are_in_the_run_config_and_the_fingerprint_only_when_on(assets, tmp_path, capsys):
    out = tmp_path / "cli_run"
    args = ["train", "--data", str(assets["images"]), "--out", str(out), "--backbone", "timm:tf_efficientnet_lite0",
            "--weights", "none", "--input-size", "64", "--base", f"pixel:{assets['base']}", "--cache-features",
            "--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--val-steps", "1", "--max-samples", "2",
            "--encoder-option", "hidden=8", "--quiet"]
    assert exit_code([*args, "--consistency-weight", "0.5", "--consistency-max-t", "300",
                 "--consistency-fraction", "0.5"]) == 0
    config = json.loads((out / "train_config.json").read_text())
    assert (config["consistency_weight"], config["consistency_max_t"], config["consistency_fraction"]) == (0.5, 300, 0.5)
    fingerprint = load_checkpoint(out / "checkpoints").state["fingerprint"]
    assert {k: fingerprint[k] for k in fingerprint if k.startswith("consistency")} == {
        "consistency_weight": 0.5, "consistency_max_t": 300, "consistency_fraction": 0.5}
    capsys.readouterr()
    assert exit_code([*args, "--consistency-weight", "0.5", "--consistency-max-t", "200", "--consistency-fraction", "0.5",
                 "--max-steps", "2", "--resume"]) == 2
    assert "settings changed (consistency_max_t)" in capsys.readouterr().err

    off = tmp_path / "off_run"
    assert exit_code([*args[:4], str(off), *args[5:]]) == 0
    assert json.loads((off / "train_config.json").read_text())["consistency_max_t"] == DEFAULT_MAX_T
    assert not any(k.startswith("consistency") for k in load_checkpoint(off / "checkpoints").state["fingerprint"])


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--consistency-weight", "-1", "--consistency-weight must be a finite number of at least 0"),
    ("--consistency-weight", "nan", "--consistency-weight must be a finite number"),
    ("--consistency-weight", "inf", "--consistency-weight must be a finite number"),
    ("--consistency-max-t", "0", "--consistency-max-t must be a positive integer"),
    ("--consistency-max-t", "1001", "--consistency-max-t must be an integer from 1 to 1000"),
    ("--consistency-fraction", "0", "--consistency-fraction must be above 0"),
    ("--consistency-fraction", "1.5", "--consistency-fraction must be a finite number from 0 to 1"),
    ("--consistency-fraction", "nan", "--consistency-fraction must be a finite number"),
])
def test_bad_values_are_one_line_and_exit_2(assets, tmp_path, capsys, option, value, message):
    args = ["train", "--data", str(assets["images"]), "--out", str(tmp_path / "bad"), "--backbone",
            "timm:tf_efficientnet_lite0", "--weights", "none", "--input-size", "64", "--base",
            f"pixel:{assets['base']}", "--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--quiet",
            option, value]
    assert exit_code(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("kwargs", [{"weight": -0.1}, {"weight": float("inf")}, {"weight": "x"}, {"max_t": 0},
                                    {"max_t": 2.5}, {"fraction": 0.0}, {"fraction": 1.01}])
def test_bad_values_in_python_are_one_line(kwargs):
    with pytest.raises(FeatinvError) as info:
        FeatureConsistency(**kwargs)
    assert "\n" not in str(info.value)
