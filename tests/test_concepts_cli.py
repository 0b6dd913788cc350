"""`featinv concepts fit` and `featinv concepts show` on a tiny image folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import featinv
from featinv.cli import app, main

runner = CliRunner()
BACKBONE = ["--backbone", "timm:tf_efficientnet_lite0", "--layer", "blocks.4", "--weights", "pretrained", "--input-size", "64"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    for name, img in featinv.builtin_photos()[:3]:
        img.resize((72, 64)).save(folder / f"{name}.png")
    return folder


@pytest.mark.parametrize("method", ["mcd", "sae"])
def test_fit_then_show(method, image_folder, tmp_path):
    out = tmp_path / "concepts"
    extra = ["--option", "steps=50"] if method == "sae" else ["--option", "clustering=kmeans"]
    result = runner.invoke(app, ["concepts", "fit", *BACKBONE, "--data", str(image_folder), "--method", method,
                                 "--n-concepts", "3", "--max-images", "2", "--out", str(out), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    assert "energy explained" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["channels"] == 112
    assert config["meta"]["backbone"] == "timm:tf_efficientnet_lite0" and config["meta"]["layer"] == "blocks.4"
    assert config["meta"]["n_images"] == 2 and config["meta"]["n_vectors"] == 2 * 4 * 4
    figure = tmp_path / "fig.png"
    image = sorted(image_folder.iterdir())[0]
    result = runner.invoke(app, ["concepts", "show", "--concepts", str(out), "--image", str(image), "--out", str(figure)])
    assert result.exit_code == 0, result.output
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_help_has_examples():
    for command in ("fit", "show"):
        result = runner.invoke(app, ["concepts", command, "--help"])
        assert result.exit_code == 0 and "Example: featinv concepts" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "mdc"], "unknown decomposer 'mdc'"),
        (["--n-concepts", "40"], "needs at least 80 feature vectors but got 48"),
        (["--option", "nonsense"], "must look like KEY=VALUE"),
    ],
)
def test_fit_bad_input_is_one_line_exit_2(args, message, image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["concepts", "fit", *BACKBONE, "--data", str(image_folder), "--out", str(tmp_path / "c"), "--quiet", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_show_bad_concepts_folder(image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["concepts", "show", "--concepts", str(tmp_path / "nothing"), "--image",
              str(sorted(image_folder.iterdir())[0]), "--out", str(tmp_path / "f.png")])
    assert exit_info.value.code == 2
    assert "concepts folder" in capsys.readouterr().err


def test_fit_never_deletes_a_folder_it_did_not_create(image_folder, tmp_path, capsys, monkeypatch):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("x")
    photos = sorted(p.name for p in image_folder.iterdir())
    for out in (victim, image_folder):  # a user's folder, and --out equal to --data
        with pytest.raises(SystemExit) as exit_info:
            main(["concepts", "fit", *BACKBONE, "--data", str(image_folder), "--n-concepts", "3", "--max-images", "2",
                  "--out", str(out), "--quiet"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "did not write" in err and "Traceback" not in err
    assert (victim / "thesis.txt").read_text() == "x" and sorted(victim.iterdir()) == [victim / "thesis.txt"]
    assert sorted(p.name for p in image_folder.iterdir()) == photos
    monkeypatch.chdir(victim)
    with pytest.raises(SystemExit) as exit_info:
        main(["concepts", "fit", *BACKBONE, "--data", str(image_folder), "--n-concepts", "3", "--max-images", "2",
              "--out", ".", "--quiet"])
    assert exit_info.value.code == 2 and "current folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]  # no hidden .old/.tmp leftovers
    out = tmp_path / "concepts"  # featinv's own concepts folder is refitted in place
    for _ in range(2):
        main(["concepts", "fit", *BACKBONE, "--data", str(image_folder), "--n-concepts", "3", "--max-images", "2",
              "--out", str(out), "--quiet"])
    assert (out / "config.json").is_file()
