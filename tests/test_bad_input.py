"""Bad input to every CLI command: one line naming the problem and the fix, exit code 2, nothing written.

Each case runs ``featinv.cli.main`` in-process on one tiny saved run, a tiny concepts folder and small
image folders (shared per module). A case asserts the message (substring), the exit code, that stderr is
exactly one ``error:`` line without a traceback, and that no file or folder appeared anywhere under the
test's folders (outputs, the run, the data).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from featinv.cli import main
from featinv.errors import FeatinvError
from tests.fixtures_model import TINY_BACKBONE, TINY_INPUT_SIZE, make_tiny_images, make_tiny_run

BB = ["--backbone", TINY_BACKBONE, "--weights", "none", "--input-size", str(TINY_INPUT_SIZE)]
WEIGHTS = "controlnet/diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("one_thread")


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """One tiny run (layer bn2, 1280 channels), concepts for another layer (112 channels), image folders."""
    from featinv.registry import create_decomposer

    root = tmp_path_factory.mktemp("bad_input")
    run = make_tiny_run(root)
    images = make_tiny_images(root / "images", count=2)
    concepts = create_decomposer("mcd", n_concepts=2).fit(torch.randn(64, 112, generator=torch.Generator().manual_seed(0)))
    concepts.meta = {"backbone": TINY_BACKBONE, "layer": "blocks.4", "weights": "none", "input_size": TINY_INPUT_SIZE}
    concepts.save(root / "concepts")
    broken = root / "broken"  # only unusable files: corrupt, truncated, not an image at all
    broken.mkdir()
    (broken / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    png = (images / "img0.png").read_bytes()
    (broken / "truncated.png").write_bytes(png[: len(png) // 3])
    (broken / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    (root / "a_file").write_text("I am a file, not a folder")
    runs = root / "runs"  # damaged copies of the run
    damage: dict[str, Callable[[Path], object]] = {
        "no_config": lambda d: (d / "config.json").unlink(),
        "corrupt_config": lambda d: (d / "config.json").write_text("{not json"),
        "incomplete_config": lambda d: (d / "config.json").write_text('{"format": "featinv-run"}'),
        "other_layer": lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"bn2"', '"blocks.4"')),
        "no_weights": lambda d: (d / WEIGHTS).unlink(),
        "truncated_weights": lambda d: _truncate(d / WEIGHTS),
        "flipped_weights": lambda d: _flip_byte(d / WEIGHTS),
        "flipped_encoder": lambda d: _flip_byte(d / "controlnet" / "encoder" / "encoder.safetensors"),
    }
    for name, hurt in damage.items():
        shutil.copytree(run, runs / name)
        hurt(runs / name)
    shutil.copytree(root / "concepts", root / "concepts_flipped")
    _flip_byte(root / "concepts_flipped" / "concepts.safetensors")
    return {"root": root, "run": run, "images": images, "image": images / "img0.png", "concepts": root / "concepts",
            "broken": broken, "empty": root / "empty", "file": root / "a_file", "runs": runs,
            "base": root / "pixel_base", "concepts_flipped": root / "concepts_flipped"}


def _tree(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


def _expect_error(args: list[str], message: str, capsys, *watch: Path) -> str:
    """Run the CLI; assert exit 2, one `error:` line containing ``message``, and no new path under ``watch``."""
    before = _tree(*watch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert message in err, err
    assert _tree(*watch) == before, f"files were written: {_tree(*watch) - before}"
    return err


# (id, args built from assets + an output path, expected message)
A = dict[str, Path]
CASES: list[tuple[str, Callable[[A, Path], list], str]] = [
    # unknown names (backbone prefix, timm model, base, encoder, decomposer, command)
    ("backbone-prefix", lambda a, o: ["layers", "tim:resnet50"], "unknown backbone 'tim': did you mean 'timm'"),
    ("backbone-model", lambda a, o: ["layers", "timm:no_such_net"], "unknown timm model 'no_such_net'"),
    ("train-base", lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--base", "nosuch:x"],
     "unknown base 'nosuch'"),
    ("train-base-folder", lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--base", f"pixel:{o}-base"],
     "pixel base folder"),
    ("train-encoder", lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--base", f"pixel:{a['base']}",
                                    "--encoder", "convv"], "unknown encoder 'convv': did you mean 'conv'"),
    ("concepts-method", lambda a, o: ["concepts", "fit", *BB, "--data", a["images"], "--out", o, "--method", "mdc"],
     "unknown decomposer 'mdc': did you mean 'mcd'"),
    ("concepts-option", lambda a, o: ["concepts", "fit", *BB, "--data", a["images"], "--out", o, "--option", "bogus=1"],
     "unexpected keyword argument 'bogus'"),
    ("viz-command", lambda a, o: ["viz", "steer", "--out", o], "No such command 'steer'"),
    # layers: misspelt, without a spatial grid
    ("layer-misspelt", lambda a, o: ["layers", TINY_BACKBONE, "--layer", "blocks.44"],
     "has no layer 'blocks.44'; closest: blocks.4"),
    ("layer-no-grid-train", lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--layer", "classifier",
                                          "--base", f"pixel:{a['base']}"], "no spatial grid"),
    ("layer-no-grid-concepts", lambda a, o: ["concepts", "fit", *BB, "--layer", "global_pool", "--data", a["images"],
                                             "--out", o, "--quiet"], "no spatial grid"),
    # data: missing, empty, only broken files
    ("data-missing", lambda a, o: ["train", "--data", a["root"] / "nope", "--out", o, *BB, "--base",
                                   f"pixel:{a['base']}"], "does not exist"),
    ("data-empty-train", lambda a, o: ["train", "--data", a["empty"], "--out", o, *BB, "--base", f"pixel:{a['base']}"],
     "no images found"),
    ("data-empty-eval", lambda a, o: ["eval", "--run", a["run"], "--data", a["empty"], "--out", o], "no images found"),
    ("images-missing", lambda a, o: ["reconstruct", "--run", a["run"], "--images", a["root"] / "nope.png", "--out", o],
     "does not exist"),
    ("data-broken-reconstruct", lambda a, o: ["reconstruct", "--run", a["run"], "--images", a["broken"], "--out", o,
                                              "--steps", "1", "--quiet"], "none of the 2 images could be read"),
    ("data-broken-concepts", lambda a, o: ["concepts", "fit", *BB, "--layer", "blocks.4", "--data", a["broken"],
                                           "--out", o, "--quiet"], "none of the 2 images could be read"),
    ("data-broken-train", lambda a, o: ["train", "--data", a["broken"], "--out", o, *BB, "--base", f"pixel:{a['base']}",
                                        "--quiet"], "training images could be decoded (corrupt or truncated"),
    ("data-broken-eval", lambda a, o: ["eval", "--run", a["run"], "--data", a["broken"], "--out", o, "--steps", "1",
                                       "--fid", "none", "--quiet"], "is not a readable image"),
    ("data-broken-eval-default-out", lambda a, o: ["eval", "--run", a["run"], "--data", a["broken"], "--steps", "1",
                                                   "--fid", "none", "--quiet"], "is not a readable image"),
    ("image-truncated-show", lambda a, o: ["concepts", "show", "--concepts", a["concepts"], "--image",
                                           a["broken"] / "truncated.png", "--out", f"{o}.png"], "not a readable image"),
    # run folders: missing / corrupt config or weights, trained for another layer
    ("run-missing", lambda a, o: ["reconstruct", "--run", a["root"] / "no_run", "--images", a["images"], "--out", o],
     "run folder"),
    *[(f"run-{name}", lambda a, o, name=name: ["reconstruct", "--run", a["runs"] / name, "--images", a["images"],
                                               "--out", o, "--steps", "1", "--quiet"], message)
      for name, message in [("no_config", "config.json does not exist"), ("corrupt_config", "is corrupt"),
                            ("incomplete_config", "is incomplete"), ("no_weights", "does not exist"),
                            ("truncated_weights", "corrupt or truncated"), ("flipped_weights", "fails its checksum"),
                            ("flipped_encoder", "fails its checksum"),
                            ("other_layer", "use the run's backbone, layer and input size")]],
    ("eval-run-checksum", lambda a, o: ["eval", "--run", a["runs"] / "flipped_weights", "--data", a["images"],
                                        "--out", o], "fails its checksum"),
    # concepts folders: another channel count, corrupt
    ("concepts-other-channels", lambda a, o: ["viz", "concept", "--run", a["run"], "--concepts", a["concepts"],
                                              "--image", a["image"], "--out", o, "--steps", "1", "--n", "1"],
     "fitted on 112"),
    ("concepts-checksum", lambda a, o: ["concepts", "show", "--concepts", a["concepts_flipped"], "--image", a["image"],
                                        "--out", f"{o}.png"], "fails its checksum"),
    ("concepts-missing", lambda a, o: ["concepts", "show", "--concepts", a["root"] / "nope", "--image", a["image"],
                                       "--out", f"{o}.png"], "concepts folder"),
    # out-of-range numbers
    ("steps-negative", lambda a, o: ["reconstruct", "--run", a["run"], "--images", a["images"], "--out", o,
                                     "--steps", "-1"], "Invalid value for '--steps'"),
    ("batch-zero", lambda a, o: ["reconstruct", "--run", a["run"], "--images", a["images"], "--out", o,
                                 "--batch-size", "0"], "Invalid value for '--batch-size'"),
    ("guidance-negative", lambda a, o: ["reconstruct", "--run", a["run"], "--images", a["images"], "--out", o,
                                        "--guidance", "-1"], "Invalid value for '--guidance'"),
    ("sweep-guidance-negative", lambda a, o: ["eval", "sweep", "--run", a["run"], "--data", a["images"], "--out", o,
                                              "--guidance", "1,-2"], "must be a finite number >= 0"),
    ("sweep-guidance-text", lambda a, o: ["eval", "sweep", "--run", a["run"], "--data", a["images"], "--out", o,
                                          "--guidance", "1,x"], "must be numbers separated by commas"),
    ("seeds-float", lambda a, o: ["reconstruct", "--run", a["run"], "--images", a["images"], "--out", o,
                                  "--seeds", "0,1.5"], "must be integers"),
    ("seeds-text-eval", lambda a, o: ["eval", "--run", a["run"], "--data", a["images"], "--out", o, "--seeds", "a"],
     "must be integers"),
    ("seed-text-demo", lambda a, o: ["demo", "--out", o, "--seed", "x"], "Invalid value for '--seed'"),
    ("per-class-zero", lambda a, o: ["eval", "--run", a["run"], "--data", a["images"], "--out", o, "--per-class", "0"],
     "Invalid value for '--per-class'"),
    ("max-steps-zero", lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--max-steps", "0"],
     "Invalid value for '--max-steps'"),
    ("lr-zero", lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--lr", "0"], "lr must be positive"),
    ("precision", lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--mixed-precision", "fp8"],
     "mixed precision 'fp8' unknown"),
    ("features-from", lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--features-from", "pixels"],
     "features-from 'pixels' unknown; use one of crop, target"),
    ("base-resolution", lambda a, o: ["base", "train", "--data", a["images"], "--out", o, "--resolution", "48"],
     "resolution must be 32 or 64"),
    ("base-widths", lambda a, o: ["base", "train", "--data", a["images"], "--out", o, "--widths", "8,x"],
     "must be integers separated by commas"),
    ("base-widths-small", lambda a, o: ["base", "train", "--data", a["images"], "--out", o, "--widths", "4,4"],
     "must each be at least 8 (the attention head size)"),
    ("device-name", lambda a, o: ["reconstruct", "--run", a["run"], "--images", a["images"], "--out", o,
                                  "--device", "gpu0"], "device 'gpu0' is not a torch device"),
    ("attenuate-negative", lambda a, o: ["viz", "concept", "--run", a["run"], "--concepts", a["concepts"], "--image",
                                         a["image"], "--out", o, "--attenuate", "-0.5"], "attenuate must be a number >= 0"),
    ("steering-n-zero", lambda a, o: ["viz", "concept", "--run", a["run"], "--concepts", a["concepts"], "--image",
                                      a["image"], "--out", o, "--n", "0"], "n must be a positive integer"),
    ("interpolate-weight", lambda a, o: ["viz", "interpolate", "--run", a["run"], "-a", a["image"], "-b", a["image"],
                                         "--out", o, "--weights", "1,1.5"], "must be a number in [0, 1]"),
    ("compose-region", lambda a, o: ["viz", "compose", "--run", a["run"], "-a", a["image"], "-b", a["image"],
                                     "--out", o, "--region", "nowhere", "--steps", "1", "--quiet"],
     "region 'nowhere' is not understood"),
    ("n-concepts-zero", lambda a, o: ["concepts", "fit", *BB, "--data", a["images"], "--out", o, "--n-concepts", "0"],
     "Invalid value for '--n-concepts'"),
    ("baseline-pixel-base", lambda a, o: ["eval", "baseline", "--base", f"pixel:{a['base']}", "--backbone",
                                          TINY_BACKBONE, "--out", o], "needs a text-conditioned base"),
    ("compare-nothing", lambda a, o: ["eval", "compare", o], "no metrics.json"),
    # output paths that are files
    *[(f"out-is-file-{name}", lambda a, o, cmd=cmd: [*cmd(a), "--out", a["file"]], "is a file")
      for name, cmd in [
          ("reconstruct", lambda a: ["reconstruct", "--run", a["run"], "--images", a["images"], "--steps", "1"]),
          ("train", lambda a: ["train", "--data", a["images"], *BB, "--base", f"pixel:{a['base']}"]),
          ("base-train", lambda a: ["base", "train", "--data", a["images"]]),
          ("eval", lambda a: ["eval", "--run", a["run"], "--data", a["images"], "--steps", "1", "--fid", "none"]),
          ("concepts", lambda a: ["concepts", "fit", *BB, "--layer", "blocks.4", "--data", a["images"],
                                  "--n-concepts", "2", "--quiet"]),
          ("viz", lambda a: ["viz", "interpolate", "--run", a["run"], "-a", a["image"], "-b", a["image"],
                             "--steps", "1"]),
          ("demo", lambda a: ["demo", "--quick"]),
      ]],
    ("show-out-is-folder", lambda a, o: ["concepts", "show", "--concepts", a["concepts"], "--image", a["image"],
                                         "--out", a["empty"]], "is a folder"),
    # explore: every bad argument fails at start-up, before a page is served
    ("explore-run", lambda a, o: ["explore", "--run", a["root"] / "nope"], "does not exist"),
    ("explore-concepts", lambda a, o: ["explore", "--run", a["run"], "--concepts", a["empty"]], "concepts"),
    ("explore-images", lambda a, o: ["explore", "--run", a["run"], "--images", a["empty"]], "no images found"),
]
# the lambdas above all take (assets, out); ids must be unique so a failure names its case
assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("args, message", [pytest.param(c[1], c[2], id=c[0]) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, assets, tmp_path, capsys):
    out = tmp_path / "out"
    _expect_error(args(assets, out), message, capsys, tmp_path, assets["root"])
    assert not out.exists()


def _deny(monkeypatch, locked: Path, mode_bit: int) -> None:
    """Pretend ``locked`` (and everything under it) lacks a permission; tests run as root, so chmod cannot."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if str(Path(path).absolute()).startswith(str(locked)) and mode & mode_bit:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("command", ["train", "concepts", "reconstruct"])
def test_unreadable_data_folder(command, assets, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    make_tiny_images(locked, count=1)
    _deny(monkeypatch, locked, os.R_OK)
    out = tmp_path / "out"
    args = {
        "train": ["train", "--data", locked, "--out", out, *BB, "--base", f"pixel:{assets['base']}"],
        "concepts": ["concepts", "fit", *BB, "--data", locked, "--out", out],
        "reconstruct": ["reconstruct", "--run", assets["run"], "--images", locked, "--out", out],
    }[command]
    _expect_error(args, "is not readable", capsys, tmp_path, assets["root"])
    assert not out.exists()


@pytest.mark.parametrize("command", ["reconstruct", "concepts"])
def test_output_folder_not_writable(command, assets, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "readonly"
    locked.mkdir()
    _deny(monkeypatch, locked, os.W_OK)
    out = locked / "out"
    args = {
        "reconstruct": ["reconstruct", "--run", assets["run"], "--images", assets["images"], "--out", out,
                        "--steps", "1", "--quiet"],
        "concepts": ["concepts", "fit", *BB, "--layer", "blocks.4", "--data", assets["images"], "--out", out,
                     "--n-concepts", "2", "--quiet"],
    }[command]
    _expect_error(args, "not writable", capsys, tmp_path, assets["root"])
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("command", [
    lambda a, o: ["layers", TINY_BACKBONE, "--device", "cuda"],
    lambda a, o: ["reconstruct", "--run", a["run"], "--images", a["images"], "--out", o, "--device", "cuda"],
    lambda a, o: ["train", "--data", a["images"], "--out", o, *BB, "--base", f"pixel:{a['base']}", "--device", "cuda"],
    lambda a, o: ["concepts", "fit", *BB, "--data", a["images"], "--out", o, "--device", "cuda:1"],
], ids=["layers", "reconstruct", "train", "concepts"])
def test_gpu_device_without_a_gpu(command, assets, tmp_path, capsys):
    out = tmp_path / "out"
    _expect_error(command(assets, out), "needs a CUDA GPU, but none is available here; use --device cpu", capsys,
                  tmp_path, assets["root"])
    assert not out.exists()


def test_debug_flag_shows_the_traceback_instead(assets, tmp_path):
    with pytest.raises(FeatinvError, match="unknown backbone"):
        main(["--debug", "layers", "tim:resnet50"])


# --------------------------------------------------------------------------------- numerical faults


@pytest.fixture(scope="module")
def model(assets):
    from featinv.diffusion.model import FeatInv

    return FeatInv.from_pretrained(assets["run"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_features_are_refused_before_sampling(model, bad):
    info = model.backbone.info
    features = torch.zeros(1, info.channels, *info.grid)
    features[0, 3, 0, 1] = bad
    with pytest.raises(FeatinvError, match="1 NaN or infinite values; check the backbone weights"):
        model.reconstruct(features=features, steps=1, progress=False)


def test_nan_in_backbone_output_is_caught_with_the_images(model, monkeypatch):
    """A backbone that produces NaN (broken weights) fails with a message, not NaN images."""
    from PIL import Image

    real = model.backbone.features
    monkeypatch.setattr(model.backbone, "features", lambda x, pooled=False: real(x, pooled) * float("nan"))
    with pytest.raises(FeatinvError, match="NaN or infinite"):
        model.reconstruct(images=[Image.new("RGB", (32, 32), "gray")], steps=1, progress=False)


def test_nan_vectors_are_refused_by_every_decomposer():
    from featinv.registry import create_decomposer

    vectors = torch.randn(32, 6)
    vectors[4, 2] = float("nan")
    for method in ("mcd", "nmf", "sae"):
        with pytest.raises(FeatinvError, match="NaN or infinite"):
            create_decomposer(method, n_concepts=2).fit(vectors)
    fitted = create_decomposer("mcd", n_concepts=2).fit(torch.randn(32, 6))
    fmap = torch.randn(1, 6, 2, 2)
    fmap[0, 0, 1, 1] = float("inf")
    with pytest.raises(FeatinvError, match="NaN or infinite"):
        fitted.decompose(fmap)


def test_check_finite_and_guidance_helpers():
    from featinv.validation import check_finite, check_guidance

    check_finite(torch.ones(3), "losses", "lower the learning rate")
    with pytest.raises(FeatinvError, match="losses contain 1 NaN or infinite values; lower the learning rate"):
        check_finite(torch.tensor([1.0, float("nan")]), "losses", "lower the learning rate")
    assert check_guidance("1.75") == 1.75 and check_guidance(0) == 0.0
    for bad in (-1, float("nan"), float("inf"), "x", None):
        with pytest.raises(FeatinvError, match="guidance"):
            check_guidance(bad)


def test_unknown_analysis_name_from_the_registry():
    from featinv.registry import create_analysis

    with pytest.raises(FeatinvError, match="unknown analysis 'steerign': did you mean 'steering'"):
        create_analysis("steerign")


def test_no_partial_output_keeps_folders_with_files_and_interrupts(tmp_path):
    from featinv.cli.boundary import no_partial_output, output_paths

    assert output_paths(["x", "--out", "a", "-o", "b", "--out=c"]) == [Path("a"), Path("b"), Path("c")]
    empty, full, stopped = tmp_path / "new" / "empty", tmp_path / "full", tmp_path / "stopped"
    with pytest.raises(FeatinvError), no_partial_output([empty, full]):
        (empty / "sub").mkdir(parents=True)
        full.mkdir()
        (full / "done.png").write_bytes(b"x")
        raise FeatinvError("bad")
    assert not (tmp_path / "new").exists()  # created parents go too
    assert (full / "done.png").exists()     # finished work is never deleted
    with pytest.raises(KeyboardInterrupt), no_partial_output([stopped]):
        stopped.mkdir()
        raise KeyboardInterrupt
    assert stopped.exists()                 # an interrupt keeps everything for the rerun


@pytest.mark.parametrize("kwargs, message", [
    ({"seeds": [1.5]}, "seed 1.5 is not an integer"),
    ({"seeds": ["a"]}, "seed 'a' is not an integer"),
    ({"seeds": []}, "no seeds given"),
    ({"guidance_scale": -1.0}, "guidance scale must be a finite number >= 0"),
    ({"guidance_scale": float("nan")}, "guidance scale must be a finite number >= 0"),
    ({"steps": 0}, "steps must be an integer from 1 to 1000"),
    ({"steps": 1001}, "steps must be an integer from 1 to 1000"),  # more than the base's timesteps: was a crash
    ({"batch_size": 0}, "batch size must be a positive integer"),
    ({"scheduler": "ddimm"}, "unknown scheduler 'ddimm'"),
])
def test_api_reconstruct_refuses_bad_numbers(model, kwargs, message):
    info = model.backbone.info
    with pytest.raises(FeatinvError, match=message):
        model.reconstruct(features=torch.zeros(1, info.channels, *info.grid), **{"steps": 1, "progress": False, **kwargs})


def test_one_line_in_a_real_process_too(assets, tmp_path):
    """Outside pytest's capture (no terminal, default console width) the error is still one line, exit 2."""
    import subprocess
    import sys

    out = tmp_path / "deep" / "out"
    result = subprocess.run(
        [sys.executable, "-m", "featinv", "reconstruct", "--run", str(assets["run"]), "--images", str(assets["images"]),
         "--out", str(out), "--seeds", "0,1.5"], capture_output=True, text=True, check=False,
        cwd=Path(__file__).resolve().parents[1], env={**os.environ, "COLUMNS": "40"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert "must be integers separated by commas" in result.stderr and result.stdout == ""
    assert not (tmp_path / "deep").exists()
