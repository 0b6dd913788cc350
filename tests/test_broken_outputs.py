"""Garbage is never finished work, and output names never collide.

NaN weights, an absurd guidance scale or a flat image are one ``error:`` line (exit 2) and never land in an
index, so a rerun with a repaired run redoes them; outputs of two inputs that share a name (``a.png`` and
``a.jpg``) get their own files, each attributed to its own source, stable across reruns.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from featinv.cli import main
from featinv.errors import FeatinvError
from tests.cli_run import one_line_error
from tests.fixtures_model import make_tiny_images, make_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny run, a copy whose ControlNet weights are NaN (checksum recomputed, so it loads), two images."""
    from featinv.diffusion.model import FeatInv

    root = tmp_path_factory.mktemp("broken_outputs")
    run = make_tiny_run(root)
    model = FeatInv.from_pretrained(run)
    with torch.no_grad():
        for param in model.controlnet.parameters():
            param.fill_(float("nan"))
    nan_run = model.save_pretrained(root / "nan_run")
    return {"root": root, "run": run, "nan_run": nan_run, "images": make_tiny_images(root / "images", count=2)}


def _rows(out: Path) -> list[dict]:
    index = out / "index.json"
    return json.loads(index.read_text())["items"] if index.is_file() else []


@pytest.mark.parametrize("case", ["nan-weights", "guidance-1e30"])
def test_nan_outputs_are_an_error_and_never_counted_as_finished(assets, tmp_path, capsys, case):
    out = tmp_path / "recon"
    run, extra = (assets["nan_run"], []) if case == "nan-weights" else (assets["run"], ["--guidance", "1e30"])
    args = ["reconstruct", "--run", run, "--images", assets["images"], "--out", out, "--steps", "2", "--quiet"]
    err = one_line_error([*args, *extra], capsys)
    assert "came out as NaN or infinite values" in err and "not kept as finished work" in err
    assert not list(out.glob("*.png")) and _rows(out) == []

    # the same folder with a sound run: every image is made now (nothing was recorded as done)
    main([str(a) for a in ["reconstruct", "--run", assets["run"], "--images", assets["images"], "--out", out,
                           "--steps", "2", "--quiet"]])
    assert "wrote 2 images, skipped 0" in capsys.readouterr().out
    assert len(_rows(out)) == 2


def test_flat_images_are_refused(assets):
    from featinv.validation import check_images

    good = torch.rand(2, 3, 4, 4)
    check_images(good, [0, 1], "fix")
    flat = good.clone()
    flat[1] = 0.25
    with pytest.raises(FeatinvError, match=r"reconstruction 1 \(seed 7\) came out as one flat colour"):
        check_images(flat, [3, 7], "fix")


def test_a_flat_or_damaged_png_from_an_earlier_run_is_redone(assets, tmp_path):
    from featinv.apps.reconstruct_folder import reconstruct_images

    out = tmp_path / "recon"
    first = reconstruct_images(assets["run"], assets["images"], out, steps=2, progress=False)
    good = {p.name: p.read_bytes() for p in first.written}
    flat, damaged = sorted(good)
    Image.new("RGB", (16, 16), (0, 0, 0)).save(out / flat)  # what NaN weights used to leave behind
    (out / damaged).write_bytes(good[damaged][:40])
    again = reconstruct_images(assets["run"], assets["images"], out, steps=2, progress=False)
    assert sorted(p.name for p in again.written) == [flat, damaged] and not again.skipped
    assert {name: (out / name).read_bytes() for name in good} == good


def test_eval_rows_scored_nan_are_redone(assets, tmp_path):
    from featinv.evaluation.evaluate import evaluate

    out = tmp_path / "eval"
    kwargs = dict(per_class=2, steps=2, fid="none", progress=False)
    first = evaluate(assets["run"], assets["images"], out, **kwargs)
    index = json.loads((out / "index.json").read_text())
    index["rows"][0]["cosine"] = float("nan")  # what NaN weights used to record
    (out / "index.json").write_text(json.dumps(index))
    again = evaluate(assets["run"], assets["images"], out, **kwargs)
    assert all(math.isfinite(row["cosine"]) for row in again.rows)
    assert [row["cosine"] for row in again.rows] == pytest.approx([row["cosine"] for row in first.rows], rel=1e-5)


def test_concepts_refuse_constant_features_and_nan_fits(monkeypatch):
    from featinv.registry import create_decomposer

    with pytest.raises(FeatinvError, match="all 32 feature vectors are the same"):
        create_decomposer("nmf", n_concepts=2).fit(torch.ones(32, 8))
    decomposer = create_decomposer("nmf", n_concepts=2)
    monkeypatch.setattr(type(decomposer), "_fit", lambda self, x: setattr(self, "atoms", torch.full((2, 8), math.nan)))
    with pytest.raises(FeatinvError, match=r"gave NaN or infinite values \(atoms\), so nothing is saved"):
        decomposer.fit(torch.rand(32, 8))
    assert not decomposer.fitted


# ------------------------------------------------------------------------------ output names


def _namesakes(folder: Path, source: Path) -> Path:
    folder.mkdir(parents=True)
    with Image.open(source / "img0.png") as img:
        img.save(folder / "a.png")
    with Image.open(source / "img1.png") as img:
        img.convert("RGB").save(folder / "a.jpg", quality=95)
    return folder


def test_namesakes_get_their_own_outputs_attributed_to_their_sources(assets, tmp_path):
    from featinv.apps.reconstruct_folder import reconstruct_images

    images = _namesakes(tmp_path / "images", assets["images"])
    out = tmp_path / "recon"
    first = reconstruct_images(assets["run"], images, out, steps=2, progress=False)
    rows = {row["file"]: Path(row["source"]).name for row in _rows(out)}
    assert rows == {"a_png_s0.png": "a.png", "a_jpg_s0.png": "a.jpg"}
    assert len(first.written) == 2

    # a rerun after losing one output redoes exactly that one, under the same name
    (out / "a_jpg_s0.png").unlink()
    again = reconstruct_images(assets["run"], images, out, steps=2, progress=False)
    assert [p.name for p in again.written] == ["a_jpg_s0.png"] and [p.name for p in again.skipped] == ["a_png_s0.png"]
    assert {row["file"]: Path(row["source"]).name for row in _rows(out)} == rows

    # an index that attributes a file to the wrong image (older numbering) makes that file redone, not skipped
    index = json.loads((out / "index.json").read_text())
    for row in index["items"]:
        row["source"] = str(images / ("a.jpg" if row["source"].endswith("a.png") else "a.png"))
    (out / "index.json").write_text(json.dumps(index))
    fixed = reconstruct_images(assets["run"], images, out, steps=2, progress=False)
    assert len(fixed.written) == 2 and {row["file"]: Path(row["source"]).name for row in _rows(out)} == rows


def test_output_names_do_not_depend_on_other_files_or_order(assets, tmp_path):
    from featinv.apps.reconstruct_folder import _output_names

    images = _namesakes(tmp_path / "images", assets["images"])
    shutil.copy(images / "a.png", images / "b.png")
    names = {p.name: stem for p, stem in _output_names([images])}
    assert names == {"a.png": "a_png", "a.jpg": "a_jpg", "b.png": "b"}
    shutil.copy(images / "a.png", images / "a_2.png")  # once the numbering scheme's name for a second "a"
    assert {p.name: stem for p, stem in _output_names([images])} == {**names, "a_2.png": "a_2"}
    other = _namesakes(tmp_path / "other", assets["images"])
    both = _output_names([images, other])
    assert len({stem for _, stem in both}) == len(both)  # the same names under two inputs: a hash keeps them apart
    assert {str(p): s for p, s in _output_names([other, images])} == {str(p): s for p, s in both}
