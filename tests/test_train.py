"""The training loop on tiny models: learning, exact resume, interrupts, NaN stop, frozen base, base CLI."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from featinv.errors import FeatinvError
from featinv.training.checkpoint import latest_checkpoint, load_checkpoint
from featinv.training.config import BaseTrainConfig, TrainConfig
from featinv.training.loop import conditioning_drop, run_training, train, train_base, training_status
from featinv.training.tasks import FeatInvTask
from tests.cli_run import exit_code
from tests.fixtures_model import TINY_BACKBONE, TINY_INPUT_SIZE, make_tiny_images, make_tiny_pixel_base

FAST = {"num_workers": 0, "progress": False, "val_steps": 2, "num_val_images": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_assets")
    return {"base": make_tiny_pixel_base(root), "images": make_tiny_images(root / "images", count=6, size=40)}


def featinv_config(assets, out, **kw) -> TrainConfig:
    settings = {"data": assets["images"], "out": out, "backbone": TINY_BACKBONE, "backbone_weights": "none",
                "input_size": TINY_INPUT_SIZE, "base": f"pixel:{assets['base']}", "encoder_kwargs": {"hidden": 8},
                "batch_size": 2, **FAST, **kw}
    return TrainConfig(**settings)


def base_config(assets, out, **kw) -> BaseTrainConfig:
    settings = {"data": assets["images"], "out": out, "resolution": 32, "widths": (8, 16), "batch_size": 2, **FAST, **kw}
    return BaseTrainConfig(**settings)


def _controlnet_state(out):
    return load_checkpoint(out / "checkpoints").params


def test_featinv_overfits_a_fixed_batch_and_keeps_the_base_frozen(assets, tmp_path):
    config = featinv_config(assets, tmp_path / "run", cache_features=True, max_steps=40, lr=1e-2, max_samples=2,
                            checkpoint_every=100)
    holder = {}

    def make(accelerator):
        holder["task"] = FeatInvTask(config, accelerator.device)
        return holder["task"]

    out = run_training(config, make)
    task_model = holder["task"].model
    batch = holder["task"].dataset()
    features = torch.stack([batch[(i, 0)]["features"] for i in range(2)])
    target = torch.stack([batch[(i, 0)]["target"] for i in range(2)]).float() / 255
    drop = torch.zeros(2, dtype=torch.bool)
    gen = torch.Generator()

    def fixed_loss(model):
        """Mean loss on the fixed batch with fixed noise and timesteps."""
        losses = []
        with torch.no_grad():
            for seed in range(6):
                gen.manual_seed(seed)
                losses.append(float(model.training_loss(features, target, drop, generator=gen)))
        return sum(losses) / len(losses)

    from featinv.diffusion.model import FeatInv

    trained = fixed_loss(task_model)
    fresh = FeatInv.create(TINY_BACKBONE, f"pixel:{assets['base']}", encoder_kwargs={"hidden": 8},
                           backbone_weights="none", input_size=TINY_INPUT_SIZE)
    untrained = fixed_loss(fresh)
    assert trained < 0.8 * untrained, (untrained, trained)
    # frozen invariants: base and backbone weights are bit-identical to freshly loaded ones
    for name, value in fresh.base.unet.state_dict().items():
        assert torch.equal(value, task_model.base.unet.state_dict()[name]), name
    assert torch.equal(fresh.base.prompt_embeds, task_model.base.prompt_embeds)
    for name, value in fresh.backbone.model.state_dict().items():
        assert torch.equal(value, task_model.backbone.model.state_dict()[name]), name
    assert all(k.startswith("controlnet.") for k in _controlnet_state(out))
    # the saved run loads and carries the trained weights
    loaded = FeatInv.from_pretrained(out)
    assert abs(fixed_loss(loaded) - trained) < 1e-5
    assert (out / "validation").is_dir() and list((out / "validation").glob("*.png"))
    assert training_status(out)["status"] == "complete"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 40 and {"loss", "lr", "samples_per_s"} <= set(lines[-1])


def test_resume_equals_uninterrupted_and_interrupt_leaves_a_loadable_run(assets, tmp_path):
    kw = {"max_steps": 4, "grad_accum": 2, "lr": 1e-3, "checkpoint_every": 100, "seed": 3}
    full = train(featinv_config(assets, tmp_path / "full", **kw))

    def stop_at_two(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train(featinv_config(assets, part, **kw), on_step=stop_at_two)
    status = training_status(part)
    assert status["status"] == "interrupted" and status["step"] == 2
    assert latest_checkpoint(part / "checkpoints").name == "step-00000002"
    from featinv.diffusion.model import FeatInv

    FeatInv.from_pretrained(part)  # the interrupted run is a loadable model
    with pytest.raises(FeatinvError, match="--resume"):
        train(featinv_config(assets, part, **kw))
    with pytest.raises(FeatinvError, match="settings changed"):
        train(featinv_config(assets, part, **{**kw, "batch_size": 1}, resume=True))
    train(featinv_config(assets, part, **kw, resume=True))
    a, b = _controlnet_state(full), _controlnet_state(part)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_sigint_checkpoints_and_stops_cleanly(assets, tmp_path):
    def ctrl_c(step, loss):
        if step == 1:
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "base"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when the suite runs in the background
    signal.signal(signal.SIGINT, signal.default_int_handler)  # what a terminal gives the CLI
    with pytest.raises(KeyboardInterrupt):
        train_base(base_config(assets, out, max_steps=5, checkpoint_every=100), on_step=ctrl_c)
    assert training_status(out)["step"] == 1
    assert load_checkpoint(out / "checkpoints").step == 1
    restored = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, before)
    assert restored is signal.default_int_handler  # the handler training found is back


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_good_checkpoint(assets, tmp_path, monkeypatch):
    from featinv.diffusion.bases import PixelBase

    real = PixelBase.training_loss
    calls = {"n": 0}

    def flaky(self, images01, drop, generator=None):
        calls["n"] += 1
        loss = real(self, images01, drop, generator=generator)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(PixelBase, "training_loss", flaky)
    out = tmp_path / "nan"
    with pytest.raises(FeatinvError, match="nan at step 3.*step-00000002"):
        train_base(base_config(assets, out, max_steps=5, checkpoint_every=2))
    good = load_checkpoint(out / "checkpoints")
    assert good.step == 2 and all(torch.isfinite(t).all() for t in good.params.values())
    assert training_status(out)["status"] == "failed"


def test_dropout_rate_and_the_loop_uses_it(assets, tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    rate = conditioning_drop(20000, 0.15, gen).float().mean().item()
    assert abs(rate - 0.15) < 0.01
    from featinv.diffusion.bases import PixelBase

    real = PixelBase.training_loss
    seen = []

    def record(self, images01, drop, generator=None):
        seen.append(drop.clone())
        return real(self, images01, drop, generator=generator)

    monkeypatch.setattr(PixelBase, "training_loss", record)
    out = train_base(base_config(assets, tmp_path / "b", max_steps=2, drop_prob=1.0, validate_every=1,
                                 gradient_checkpointing=True))
    assert len(seen) == 2 and all(d.all() for d in seen)
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == ["step-00000001.png", "step-00000002.png"]


def test_config_errors_are_clear(assets, tmp_path):
    with pytest.raises(FeatinvError, match="mixed precision"):
        train_base(base_config(assets, tmp_path / "x", mixed_precision="fp8"))
    with pytest.raises(FeatinvError, match="fp16"):
        train_base(base_config(assets, tmp_path / "x", mixed_precision="fp16", device="cpu"))
    with pytest.raises(FeatinvError, match="resolution"):
        train_base(base_config(assets, tmp_path / "x", resolution=48))
    with pytest.raises(FeatinvError, match="no images"):
        (tmp_path / "empty").mkdir()
        train_base(base_config(assets, tmp_path / "x", data=tmp_path / "empty"))
    with pytest.raises(FeatinvError, match="TrainConfig"):
        train(base_config(assets, tmp_path / "x"))


def test_base_train_cli_writes_a_loadable_resumable_base(assets, tmp_path, capsys):
    from featinv.diffusion.bases import load_base

    out = tmp_path / "pixel"
    args = ["base", "train", "--data", str(assets["images"]), "--out", str(out), "--resolution", "32",
            "--widths", "8,16", "--batch-size", "2", "--num-workers", "0", "--val-steps", "2", "--quiet"]
    assert exit_code([*args, "--max-steps", "2"]) == 0
    base = load_base(f"pixel:{out}")
    assert base.resolution == 32
    assert exit_code([*args, "--max-steps", "3", "--resume"]) == 0
    assert training_status(out)["step"] == 3
    assert exit_code([*args, "--max-steps", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert exit_code([*args, "--widths", "a,b"]) == 2


def test_train_cli_with_cached_features(assets, tmp_path):
    from featinv.diffusion.model import FeatInv

    out = tmp_path / "cli_run"
    args = ["train", "--data", str(assets["images"]), "--out", str(out), "--backbone", TINY_BACKBONE,
            "--weights", "none", "--input-size", str(TINY_INPUT_SIZE), "--base", f"pixel:{assets['base']}",
            "--cache-features", "--max-steps", "2", "--batch-size", "2", "--num-workers", "0", "--val-steps", "2",
            "--max-samples", "3", "--gradient-checkpointing", "--quiet"]
    assert exit_code(args) == 0
    assert list(out.glob("feature_cache-*.safetensors"))
    assert FeatInv.from_pretrained(out).config["backbone"]["spec"] == TINY_BACKBONE
    card = (out / "README.md").read_text()  # the model card: shareable as it is
    assert "library_name: featinv" in card and TINY_BACKBONE in card and "Not evaluated yet" in card
    assert exit_code([*args[:-1], "--mixed-precision", "fp8"]) == 2


def test_train_cli_encoder_option_reaches_the_encoder_and_the_resume_check(assets, tmp_path, capsys):
    """``--encoder-option hidden=8`` (the conv encoder's width) builds that encoder, is recorded in the run's
    train config and checkpoint fingerprint, and a bad key is one line naming the valid ones."""
    from featinv.diffusion.model import FeatInv

    out = tmp_path / "opt_run"
    args = ["train", "--data", str(assets["images"]), "--out", str(out), "--backbone", TINY_BACKBONE,
            "--weights", "none", "--input-size", str(TINY_INPUT_SIZE), "--base", f"pixel:{assets['base']}",
            "--cache-features", "--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--val-steps", "1",
            "--max-samples", "2", "--quiet"]
    assert exit_code([*args, "--encoder-option", "hidden=8"]) == 0
    assert json.loads((out / "train_config.json").read_text())["encoder_kwargs"] == {"hidden": 8}
    assert FeatInv.from_pretrained(out).controlnet.encoder.config.hidden == 8
    assert load_checkpoint(out / "checkpoints").state["fingerprint"]["encoder_options"] == {"hidden": 8}
    capsys.readouterr()
    assert exit_code([*args, "--encoder-option", "hidden=16", "--max-steps", "2", "--resume"]) == 2
    assert "settings changed (encoder_options)" in capsys.readouterr().err

    bad = tmp_path / "bad"
    for option, message in [("widht=8", "encoder 'conv' has no option 'widht'; its options are: hidden"),
                            ("hidden", "--encoder-option 'hidden' must look like KEY=VALUE"),
                            ("grid=4", "encoder 'conv' has no option 'grid'")]:
        assert exit_code([*args[:4], str(bad), *args[5:], "--encoder-option", option]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not bad.exists()


def test_encoder_options_are_checked_from_the_encoder_class(assets, tmp_path):
    from featinv.training.config import check_encoder_options, encoder_option_names

    with pytest.raises(FeatinvError, match=r"encoder 'conv' has no option 'widht'; its options are: hidden"):
        train(featinv_config(assets, tmp_path / "x", encoder_kwargs={"widht": 8}, max_steps=1))
    assert encoder_option_names("conv") == ["hidden"]  # known once its class is loaded
    assert encoder_option_names("perceiver") in (None, ["depth", "dim", "heads", "num_latents", "position_bands"])
    with pytest.raises(FeatinvError, match="must be a dict"):
        check_encoder_options("conv", ["hidden", 8])
    with pytest.raises(FeatinvError, match="unknown encoder 'convv'"):
        check_encoder_options("convv", {})


def test_features_from_target_conditions_on_what_the_backbone_sees_of_the_base_image(assets, tmp_path):
    """``features_from="target"``: the cached features are the backbone's view of the base-resolution image
    (resized up to its input, as it sees a reconstruction), not of a sharper crop at its own input size."""
    holder = {}

    def run(view: str):
        config = featinv_config(assets, tmp_path / view, cache_features=True, max_steps=1, max_samples=2,
                                features_from=view)

        def make(accelerator):
            holder[view] = FeatInvTask(config, accelerator.device)
            return holder[view]

        run_training(config, make)
        return holder[view]

    by_target, by_crop = run("target"), run("crop")
    assert "crop" not in by_target.sizes and "crop" in by_crop.sizes
    sample = by_target.dataset()[(0, 0)]
    backbone = by_target.model.backbone
    with torch.no_grad():
        expected = backbone.features(backbone.normalize(sample["target"][None].float() / 255))[0]
    torch.testing.assert_close(sample["features"], expected, rtol=1e-4, atol=1e-5)
    # the same sample (same crop box) seen at the backbone's own input size gives other features
    assert not torch.allclose(by_crop.dataset()[(0, 0)]["features"], sample["features"], atol=1e-3)
    torch.testing.assert_close(by_crop.dataset()[(0, 0)]["target"], sample["target"])
    assert len({p.name for p in (tmp_path / "target").glob("feature_cache-*")} |
               {p.name for p in (tmp_path / "crop").glob("feature_cache-*")}) == 2  # the view is in the cache key
    with pytest.raises(FeatinvError, match=r"cannot resume .* settings changed \(features_from\)"):
        train(featinv_config(assets, tmp_path / "target", cache_features=True, max_steps=2, max_samples=2,
                             features_from="crop", resume=True))
    with pytest.raises(FeatinvError, match="features-from 'pixels' unknown; use one of crop, target"):
        train(featinv_config(assets, tmp_path / "bad", features_from="pixels"))


class _Payload:
    """A pickle that creates a file when unpickled: what a hostile shared run folder could hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_unpickles_code_from_a_checkpoint(assets, tmp_path):
    kw = {"max_steps": 2, "lr": 1e-3, "checkpoint_every": 1, "seed": 3}

    def stop_at_one(step, loss):
        if step == 1:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(featinv_config(assets, run, **kw), on_step=stop_at_one)
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert load_checkpoint(checkpoint).rng, "an honest checkpoint (with numpy RNG state) loads data-only"
    marker = tmp_path / "pwned"
    trainer_file = checkpoint / "trainer_state.pt"
    state = torch.load(trainer_file, weights_only=True)
    state["optimizer"] = _Payload(marker)
    torch.save(state, trainer_file)
    with pytest.raises(FeatinvError, match="refusing to load"):
        train(featinv_config(assets, run, **kw, resume=True))
    assert not marker.exists()
