"""Bring your own model: numpy images everywhere, ``py:`` factories, wrapped ``nn.Module``s and ``hf:``
transformers vision models (random init, built from configs, saved to a temp folder, never downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import featinv
from featinv.cli import app, main
from featinv.errors import FeatinvError
from tests.fixtures_own_models import HF_MODELS, TinyNet, save_tiny_hf_models, write_py_factory
from tests.test_backbones import quadrant_change

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_net() -> featinv.Backbone:
    torch.manual_seed(0)
    return featinv.backbone(TinyNet(), input_size=32)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return save_tiny_hf_models(tmp_path_factory.mktemp("hf"))


@pytest.fixture
def py_path(tmp_path, monkeypatch):
    folder = write_py_factory(tmp_path / "code")
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _exit(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code), capsys.readouterr().err


# ------------------------------------------------------------------------------------- numpy images

def _photo(h: int = 24, w: int = 40) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_numpy_images_of_every_common_kind_match_pil(tiny_net) -> None:
    rgb = _photo()
    want = tiny_net.preprocess(Image.fromarray(rgb))
    torch.testing.assert_close(tiny_net.preprocess(rgb), want)                         # uint8 H×W×3
    torch.testing.assert_close(tiny_net.preprocess(rgb / 255.0), want)                 # float64 in [0, 1]
    torch.testing.assert_close(tiny_net.preprocess((rgb / 255.0).astype(np.float32)), want)
    rgba = np.concatenate([rgb, np.full((24, 40, 1), 7, np.uint8)], axis=-1)
    torch.testing.assert_close(tiny_net.preprocess(rgba), want)                        # alpha dropped
    gray = rgb[..., 0]
    want_gray = tiny_net.preprocess(Image.fromarray(gray))
    torch.testing.assert_close(tiny_net.preprocess(gray), want_gray)                   # H×W
    torch.testing.assert_close(tiny_net.preprocess(gray[..., None]), want_gray)        # H×W×1
    torch.testing.assert_close(tiny_net.preprocess(gray.astype(np.uint16) * 257), want_gray)  # 16-bit
    tensor = torch.from_numpy(rgb).permute(2, 0, 1) / 255.0
    mixed = tiny_net.preprocess([rgb, Image.fromarray(rgb), tensor])
    assert mixed.shape == (3, 3, 32, 32)
    for row in mixed:
        torch.testing.assert_close(row[None], want)
    torch.testing.assert_close(tiny_net.preprocess(np.stack([rgb, rgb])), torch.cat([want, want]))  # B×H×W×C


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((3, 24, 40), np.uint8), "channels-last"),
    (np.zeros((24, 40, 2), np.uint8), "H×W×3"),
    (np.zeros((24, 40, 3), np.int64), "dtype int64"),
    (np.full((24, 40, 3), 255.0), "divide by 255"),
    (np.full((24, 40, 3), -0.5), r"\[0, 1\]"),
    (np.full((24, 40, 3), np.nan), "NaN"),
    (np.zeros((0, 40, 3), np.uint8), "empty"),
])
def test_bad_numpy_images_are_one_line_errors(tiny_net, array: np.ndarray, message: str) -> None:
    with pytest.raises(FeatinvError, match=message) as info:
        tiny_net.preprocess(array)
    assert "\n" not in str(info.value)


def test_numpy_images_reach_analyses_training_and_concepts() -> None:
    from featinv.analyses.base import as_images
    from featinv.concepts.fit import _image_items
    from featinv.training.data import load_training_images

    rgb = _photo()
    named = as_images([rgb, ("cat", rgb / 255.0), Image.fromarray(rgb)])
    assert [item.name for item in named] == ["image0", "cat", "image2"]
    assert all(np.array_equal(np.asarray(item.image), rgb) for item in named)
    assert len(as_images(np.stack([rgb, rgb]))) == 2  # a B×H×W×C batch
    assert len(load_training_images([rgb, rgb[..., 0]]).items) == 2
    items, description = _image_items([rgb, rgb], None)
    assert len(items) == 2 and description == "2 images"
    with pytest.raises(FeatinvError, match="numpy arrays"):
        as_images([object()])


# ------------------------------------------------------------------------------------- nn.Module / py:

def test_wrapped_module_has_locality_and_its_options(tiny_net) -> None:
    assert tiny_net.layer == "stages" and tiny_net.info.grid == (8, 8) and tiny_net.info.num_classes == 4
    tl = quadrant_change(tiny_net, 32, "TL")
    assert tl[0] == max(tl) and tl[0] > tl[3], tl
    tr = quadrant_change(tiny_net, 32, "TR")
    assert tr[1] == max(tr) and tr[1] > tr[2], tr
    custom = featinv.backbone(TinyNet(), layer="stages.1", input_size=48, mean=0.5, std=(0.2, 0.3, 0.4))
    assert custom.info.grid == (12, 12) and custom.preprocessing.mean == (0.5, 0.5, 0.5)
    assert custom.preprocessing.std == (0.2, 0.3, 0.4)
    encoder = featinv.backbone(TinyNet(), input_size=32, classifier=False)
    assert not encoder.has_classifier and encoder.info.num_classes == 0
    with pytest.raises(FeatinvError, match="no classifier head"):
        encoder.logits(encoder.preprocess(_photo()))
    with pytest.raises(FeatinvError, match="std must be"):
        featinv.backbone(TinyNet(), std=(0, 1, 1))
    with pytest.raises(FeatinvError, match="only apply to a wrapped nn.Module"):
        featinv.backbone("timm:convnext_atto", weights="none", classifier=False)


def test_py_factory_through_the_cli(py_path) -> None:
    result = runner.invoke(app, ["layers", "py:my_models:build", "--input-size", "32", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["spec"] == "py:my_models:build" and data["default"] == "stages"
    assert data["info"]["grid"] == [8, 8] and data["info"]["num_classes"] == 4
    options = featinv.backbone("py:my_models:build_with_options", weights="none")
    assert options.info.input_size == (32, 32) and options.preprocessing.std == (0.25, 0.25, 0.25)
    overridden = featinv.backbone("py:my_models:build_with_options", input_size=64, mean=(0.1, 0.2, 0.3))
    assert overridden.info.grid == (16, 16) and overridden.preprocessing.mean == (0.1, 0.2, 0.3)
    assert featinv.backbone("py:my_models:build_encoder").info.num_classes == 0


@pytest.mark.parametrize(("spec", "message"), [
    ("py:no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
    ("py:my_models:nothing", "has no attribute 'nothing'"),
    ("py:my_models", "must look like py:package.module:factory"),
    ("py:my_models:broken", "weights server down"),
])
def test_bad_py_specs_exit_2_with_one_line(py_path, capsys, spec: str, message: str) -> None:
    code, err = _exit(["layers", spec], capsys)
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------- hf:

@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_models_have_locality_at_their_default_layer(hf_models, name: str) -> None:
    backbone = featinv.backbone(f"hf:{hf_models[name]}")
    assert backbone.info.grid == (4, 4) and backbone.info.input_size == (32, 32)
    tl = quadrant_change(backbone, 32, "TL")
    assert tl[0] == max(tl) and tl[0] > tl[3], tl
    tr = quadrant_change(backbone, 32, "TR")
    assert tr[1] == max(tr) and tr[1] > tr[2], tr


def test_hf_layouts_preprocessing_and_heads_come_from_the_saved_model(hf_models) -> None:
    vit = featinv.backbone(f"hf:{hf_models['vit']}")
    assert vit.layer == "vit.layers.1" and vit.knowledge.prefix_tokens == 1 and vit.info.num_classes == 5
    x = vit.preprocess(_photo())
    fmap, logits = vit.features_and_logits(x)
    assert fmap.shape == (1, 16, 4, 4) and logits.shape == (1, 5)
    assert vit.preprocessing.mean == (0.5, 0.5, 0.5)
    dino = featinv.backbone(f"hf:{hf_models['dinov2_registers']}")
    assert dino.knowledge.prefix_tokens == 3 and not dino.has_classifier  # class + 2 registers
    assert dino.preprocessing.interpolation == "bicubic" and dino.preprocessing.mean[0] == pytest.approx(0.48145466)
    assert featinv.backbone(f"hf:{hf_models['siglip_vision']}").knowledge.prefix_tokens == 0
    assert featinv.backbone(f"hf:{hf_models['convnext']}").layer == "convnext.encoder.stages.1"
    swin = featinv.backbone(f"hf:{hf_models['swin']}", layer="embeddings")  # a (tokens, size) tuple output
    assert swin.info.grid == (8, 8) and swin.info.channels == 8
    bigger = featinv.backbone(f"hf:{hf_models['vit']}", input_size=48)  # position embeddings interpolated
    assert bigger.info.grid == (6, 6)


def test_hf_layers_cli_lists_the_model(hf_models) -> None:
    result = runner.invoke(app, ["layers", f"hf:{hf_models['clip_vision']}", "--spatial-only", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {row["path"]: row for row in data["layers"]}
    assert data["default"] == "encoder.layers.1" and rows["encoder.layers.1"]["layout"] == "tokens+1"
    assert rows["encoder.layers.0"]["shape"] == [16, 4, 4] and "post_layernorm" not in rows


def test_bad_hf_specs_exit_2_with_one_line(hf_models, tmp_path, capsys) -> None:
    vit = str(hf_models["vit"])
    for args, message in [
        (["layers", f"hf:{tmp_path / 'missing'}"], "does not exist"),
        (["layers", f"hf:{vit}", "--layer", "vit.layers.9"], "has no layer 'vit.layers.9'"),
        (["layers", f"hf:{vit}", "--layer", "classifier"], "no spatial grid"),
    ]:
        code, err = _exit(args, capsys)
        assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------- end to end

def _cli_ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_classifier_free_hf_model_trains_reconstructs_and_evaluates(hf_models, tmp_path, one_thread) -> None:
    """DINOv2 with registers (no classifier): train a few steps, reconstruct from numpy images, evaluate:
    cosine and FID are reported, top-k is absent (not zero) with a one-line reason."""
    from featinv.diffusion.model import FeatInv
    from tests.fixtures_model import make_tiny_images, make_tiny_pixel_base

    base = make_tiny_pixel_base(tmp_path)
    images = make_tiny_images(tmp_path / "images", count=3, size=40)
    run = tmp_path / "run"
    _cli_ok(["train", "--data", str(images), "--out", str(run), "--backbone", f"hf:{hf_models['dinov2_registers']}",
             "--base", f"pixel:{base}", "--max-steps", "2", "--batch-size", "2", "--num-workers", "0",
             "--val-steps", "2", "--encoder-option", "hidden=8", "--quiet"])
    model = FeatInv.from_pretrained(run)
    assert not model.backbone.has_classifier and model.backbone.knowledge.prefix_tokens == 3
    rec = model.reconstruct(images=[_photo(), _photo()[..., 0]], seeds=[0, 1], steps=1, progress=False)
    assert rec.images.shape == (2, 3, 16, 16) and rec.fidelity is not None

    common = ["eval", "--run", str(run), "--data", str(images), "--steps", "1", "--fid", "backbone", "-q"]
    table = " ".join(_cli_ok(common).split())  # rich wraps long lines
    assert "top5" not in table and "no classifier head" in table and "FID" in table
    summary = json.loads(_cli_ok([*common, "--json"]))
    assert "top5" not in summary and "top1" not in summary and "no classifier head" in summary["topk_note"]
    assert summary["cosine_sim"]["mean"] is not None and summary["fid"]["value"] is not None
    markdown = (run / "eval" / "images" / "metrics.md").read_text()
    assert "| Model | cosine-sim | FID[" in markdown and "top5" not in markdown


def test_py_factory_run_keeps_the_preprocessing_given_on_the_cli(py_path, tmp_path, one_thread) -> None:
    from featinv.diffusion.model import FeatInv
    from tests.fixtures_model import make_tiny_images, make_tiny_pixel_base

    base = make_tiny_pixel_base(tmp_path)
    images = make_tiny_images(tmp_path / "images", count=2, size=40)
    run = tmp_path / "run"
    _cli_ok(["train", "--data", str(images), "--out", str(run), "--backbone", "py:my_models:build",
             "--input-size", "32", "--mean", "0.5", "--std", "0.2,0.3,0.4", "--base", f"pixel:{base}",
             "--max-steps", "1", "--batch-size", "2", "--num-workers", "0", "--val-steps", "1",
             "--encoder-option", "hidden=8", "--quiet"])
    model = FeatInv.from_pretrained(run)
    assert model.backbone.spec == "py:my_models:build" and model.backbone.info.grid == (8, 8)
    assert model.backbone.preprocessing.mean == (0.5, 0.5, 0.5)
    assert model.backbone.preprocessing.std == (0.2, 0.3, 0.4)


def test_hf_hub_ids_load_from_the_library_cache_and_never_download(hf_models, tmp_path, monkeypatch, capsys) -> None:
    """``hf:ORG/NAME`` goes through huggingface_hub's cache (laid out here as the hub lays it out); an id
    that is not cached is a one-line offline error (tests run with HF_HUB_OFFLINE=1)."""
    import shutil

    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--someorg--tiny-vit"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(hf_models["vit"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    backbone = featinv.backbone("hf:someorg/tiny-vit")
    assert backbone.spec == "hf:someorg/tiny-vit" and backbone.info.num_classes == 5
    code, err = _exit(["layers", "hf:someorg/not-cached"], capsys)
    assert code == 2 and "could not load the pretrained weights of hf:someorg/not-cached" in err
    assert err.count("\n") == 1
