"""The trainer's GPU speed options on a CPU: each one's outputs match the plain path within its precision's
tolerance, ``auto`` changes nothing on a CPU, bad values are one-line errors, and the options reach the run.

``--compile`` is tested for its plumbing only: compiling the tiny test networks with torch.compile took
65-115 s per network on this 2-core CPU (eager backend, measured), too slow for the suite; the GPU script
(``benchmarks/run_gpu.sh``) measures the real thing.
"""

from __future__ import annotations

import json

import pytest
import torch

from featinv.errors import FeatinvError
from featinv.training.checkpoint import load_checkpoint
from featinv.training.config import TrainConfig
from featinv.training.loop import train, training_status
from featinv.training.speed import SpeedSettings, adamw_options, fused_adamw_supported, resolve_speed
from tests.fixtures_model import (
    TINY_BACKBONE,
    TINY_INPUT_SIZE,
    make_tiny_images,
    make_tiny_pixel_base,
    make_tiny_sd,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"num_workers": 0, "progress": False, "val_steps": 2, "num_val_images": 1, "checkpoint_every": 100,
        "lr": 1e-3, "seed": 5, "device": "cpu"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed_assets")
    return {"base": make_tiny_pixel_base(root), "images": make_tiny_images(root / "images", count=4, size=40),
            "sd": make_tiny_sd(root)}


def config(assets, out, base=None, **kw) -> TrainConfig:
    settings = {"data": assets["images"], "out": out, "backbone": TINY_BACKBONE, "backbone_weights": "none",
                "input_size": TINY_INPUT_SIZE, "base": base or f"pixel:{assets['base']}",
                "encoder_kwargs": {"hidden": 8}, "batch_size": 2, "max_steps": 3, "cache_features": True, **FAST, **kw}
    return TrainConfig(**settings)


def losses_and_weights(cfg: TrainConfig) -> tuple[list[float], dict[str, torch.Tensor]]:
    losses: list[float] = []
    out = train(cfg, on_step=lambda step, loss: losses.append(loss))
    return losses, load_checkpoint(out / "checkpoints").params


def assert_close(a, b, rtol: float, atol: float, weight_atol: float | None = None) -> None:
    """Losses within (rtol, atol); trained weights within ``weight_atol`` (default: atol). AdamW's update is
    about lr·sign(gradient) wherever a gradient is tiny, so a rounding difference in a near-zero gradient may
    move a weight by up to lr per step: layouts that round differently are held to a few lr's."""
    la, wa = a
    lb, wb = b
    assert torch.allclose(torch.tensor(la), torch.tensor(lb), rtol=rtol, atol=atol), (la, lb)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name].float(), wb[name].float(), rtol=rtol, atol=weight_atol or atol), name


def test_auto_is_a_no_op_on_a_cpu_and_turns_each_remedy_on_for_cuda():
    cpu_config = TrainConfig(data="x", out="y", mixed_precision="bf16")
    assert resolve_speed(cpu_config, torch.device("cpu")) == SpeedSettings()
    cuda = resolve_speed(cpu_config, torch.device("cuda"))
    assert cuda.channels_last and cuda.frozen_dtype == torch.bfloat16 and cuda.adamw_kwargs() == {"fused": True}
    assert not cuda.compile
    assert resolve_speed(TrainConfig(data="x", out="y"), torch.device("cuda")).frozen_dtype == torch.float32
    off = TrainConfig(data="x", out="y", mixed_precision="bf16", channels_last=False, frozen_precision="fp32",
                      optimizer_impl="foreach")
    assert resolve_speed(off, torch.device("cuda")) == SpeedSettings(optimizer=(("foreach", True),))
    fused = adamw_options("fused", torch.device("cpu"))
    assert fused == ({"fused": True} if fused_adamw_supported(torch.device("cpu")) else {"foreach": True})


@pytest.mark.parametrize(("kw", "message"), [
    ({"compile_mode": "fast", "compile": True}, "compile mode 'fast' unknown"),
    ({"compile_mode": "reduce-overhead"}, "needs --compile"),
    ({"optimizer_impl": "apex"}, "optimizer implementation 'apex' unknown"),
    ({"frozen_precision": "fp8"}, "frozen precision 'fp8' unknown"),
    ({"frozen_precision": "bf16"}, "needs --mixed-precision bf16"),
    ({"cache_latents": True, "cache_features": False}, "--cache-latents needs --cache-features"),
])
def test_bad_speed_values_are_one_line_errors(assets, tmp_path, kw, message):
    with pytest.raises(FeatinvError, match=message) as info:
        config(assets, tmp_path / "run", **kw).check()
    assert "\n" not in str(info.value)


def test_channels_last_matches_the_plain_layout(assets, tmp_path):
    plain = losses_and_weights(config(assets, tmp_path / "plain"))
    nhwc = losses_and_weights(config(assets, tmp_path / "nhwc", channels_last=True))
    assert_close(plain, nhwc, rtol=1e-4, atol=1e-6, weight_atol=2 * FAST["lr"])


def test_optimizer_implementations_match(assets, tmp_path):
    plain = losses_and_weights(config(assets, tmp_path / "plain"))
    for impl in ("fused", "foreach", "loop"):
        assert_close(plain, losses_and_weights(config(assets, tmp_path / impl, optimizer_impl=impl)),
                     rtol=1e-5, atol=1e-6, weight_atol=2 * FAST["lr"])


def test_frozen_networks_in_bf16_match_fp32_weights_within_bf16_tolerance(assets, tmp_path):
    """Under --mixed-precision bf16 the frozen networks' weights may be stored in bf16 (no casts per step): the
    losses and trained weights stay within bf16's tolerance of fp32-stored weights, validation sampling and
    the backbone run with them, and the precision is part of the resume check."""
    fp32 = losses_and_weights(config(assets, tmp_path / "fp32", mixed_precision="bf16", cache_features=False))
    out = tmp_path / "bf16"
    bf16 = losses_and_weights(config(assets, out, mixed_precision="bf16", frozen_precision="bf16",
                                     cache_features=False))
    assert_close(fp32, bf16, rtol=3e-2, atol=1e-3, weight_atol=3 * FAST["lr"])
    stored = load_checkpoint(out / "checkpoints").state["fingerprint"]
    assert stored["frozen_precision"] == "bf16"
    assert "frozen_precision" not in load_checkpoint(tmp_path / "fp32" / "checkpoints").state["fingerprint"]
    assert json.loads((out / "train_config.json").read_text())["frozen_precision"] == "bf16"
    with pytest.raises(FeatinvError, match="frozen_precision"):
        train(config(assets, out, mixed_precision="bf16", frozen_precision="fp32", cache_features=False, resume=True,
                     max_steps=4))


def test_compile_option_compiles_the_step_networks_and_reports_the_warm_up(assets, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    out = train(config(assets, tmp_path / "run", compile=True, compile_mode="reduce-overhead", log_every=1))
    names = [name for name, _ in compiled]
    assert names[:2] == ["UNet2DConditionModel", "FeatInvControlNet"] and len(names) == 3  # + the backbone
    assert all(kw == {"mode": "reduce-overhead"} for _, kw in compiled)
    state = training_status(out)
    assert state["compile_warmup_s"] >= 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "compile_warmup_s" in lines[0] and all("compile_warmup_s" not in line for line in lines[1:])
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["compile"] is True and recorded["compile_mode"] == "reduce-overhead"


def test_cache_latents_on_a_pixel_base_is_the_identity_bit_for_bit(assets, tmp_path):
    plain = losses_and_weights(config(assets, tmp_path / "plain"))
    out = tmp_path / "latents"
    cached = losses_and_weights(config(assets, out, cache_latents=True))
    assert plain[0] == cached[0]
    assert all(torch.equal(plain[1][k], cached[1][k]) for k in plain[1])
    from featinv.io import load_safetensors

    (cache_file,) = out.glob("feature_cache-*.safetensors")
    assert "moments" in load_safetensors(cache_file)
    assert load_checkpoint(out / "checkpoints").state["fingerprint"]["cache_latents"] is True


def test_cache_latents_with_a_vae_matches_encoding_every_step(assets, tmp_path):
    """The cache keeps the VAE's latent distribution; each step still draws its latent from it with the step's
    generator, so the loss is the uncached one up to the VAE's batch-size rounding."""
    sd = f"sd:{assets['sd']}"
    plain = losses_and_weights(config(assets, tmp_path / "plain", base=sd))
    cached = losses_and_weights(config(assets, tmp_path / "latents", base=sd, cache_latents=True))
    assert_close(plain, cached, rtol=1e-4, atol=1e-6, weight_atol=2 * FAST["lr"])


def test_training_cli_takes_the_speed_options(assets, tmp_path):
    from featinv.cli import main

    out = tmp_path / "cli"
    args = ["train", "--data", str(assets["images"]), "--out", str(out), "--backbone", TINY_BACKBONE,
            "--weights", "none", "--input-size", str(TINY_INPUT_SIZE), "--base", f"pixel:{assets['base']}",
            "--cache-features", "--cache-latents", "--max-steps", "1", "--batch-size", "2", "--num-workers", "0",
            "--val-steps", "1", "--channels-last", "--optimizer-impl", "foreach", "--device", "cpu", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--frozen-precision", "bf16"])
    assert exit_info.value.code == 2
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["channels_last"] is True and recorded["cache_latents"] is True
    assert recorded["optimizer_impl"] == "foreach"
