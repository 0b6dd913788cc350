"""`featinv reconstruct` end to end on a tiny saved run and real PNG files: outputs, index, resume, errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from featinv.apps.reconstruct_folder import reconstruct_images
from featinv.cli import app
from featinv.diffusion.model import FeatInv
from featinv.errors import FeatinvError
from tests.fixtures_model import make_tiny_images, make_tiny_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run"))


def test_cli_writes_pngs_and_index_and_resumes(run_dir, tmp_path):
    images = make_tiny_images(tmp_path / "photos", count=2)
    (images / "notes.txt").write_text("not an image")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    args = ["reconstruct", "--run", str(run_dir), "--images", str(images), "--seeds", "0,1", "--out", str(out),
            "--steps", "2", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 4 images" in result.output and "broken.png" in result.output
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["img0_s0.png", "img0_s1.png", "img1_s0.png", "img1_s1.png"]
    assert Image.open(out / "img0_s0.png").size == (16, 16)  # the base resolution
    index = json.loads((out / "index.json").read_text())
    assert index["steps"] == 2 and index["guidance_scale"] == 1.75 and index["scheduler"] == "ddim"
    assert [item["file"] for item in index["items"]] == pngs
    assert {item["seed"] for item in index["items"]} == {0, 1}
    assert any(u.endswith("broken.png") for u in index["unreadable"])

    # an interrupted run: one output missing -> only that one is redone
    first = (out / "img0_s0.png").read_bytes()
    (out / "img1_s1.png").unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 1 images, skipped 3" in result.output
    assert (out / "img0_s0.png").read_bytes() == first and (out / "img1_s1.png").exists()
    assert len(json.loads((out / "index.json").read_text())["items"]) == 4


def test_api_resize_and_settings_guard(run_dir, tmp_path):
    image = make_tiny_images(tmp_path / "one", count=1) / "img0.png"
    out = tmp_path / "out"
    model = FeatInv.from_pretrained(run_dir)  # a loaded model works as well as a run folder
    summary = reconstruct_images(model, [image], out, seeds=[3], steps=1, resize=True, progress=False)
    assert [p.name for p in summary.written] == ["img0_s3.png"]
    assert Image.open(out / "img0_s3.png").size == (64, 64)  # the backbone's input size
    with pytest.raises(FeatinvError, match="other settings"):
        reconstruct_images(model, [image], out, seeds=[3], steps=2, resize=True, progress=False)
    again = reconstruct_images(model, [image], out, seeds=[3], steps=2, resize=True, overwrite=True, progress=False)
    assert len(again.written) == 1 and not again.skipped


def test_cli_errors_are_one_line(tmp_path, run_dir):
    result = runner.invoke(app, ["reconstruct", "--run", str(tmp_path / "nope"), "--images", str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, FeatinvError)
    result = runner.invoke(app, ["reconstruct", "--run", str(run_dir), "--images", str(tmp_path / "missing"),
                                 "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, FeatinvError) and "does not exist" in str(result.exception)
    result = runner.invoke(app, ["reconstruct", "--run", str(run_dir), "--images", str(tmp_path),
                                 "--seeds", "a,b", "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, FeatinvError) and "integers" in str(result.exception)
    result = runner.invoke(app, ["reconstruct", "--help"])
    assert result.exit_code == 0 and "Example: featinv reconstruct" in result.output


def test_out_inside_the_images_folder_is_not_reingested_on_rerun(run_dir, tmp_path):
    images = make_tiny_images(tmp_path / "photos", count=2)
    out = images / "recon"
    for _ in range(2):
        summary = reconstruct_images(run_dir, images, out, seeds=[0], steps=1, progress=False)
    assert summary.written == [] and sorted(p.name for p in out.glob("*.png")) == ["img0_s0.png", "img1_s0.png"]
