"""`featinv layers SPEC`: the table, JSON, and the one-line error for a misspelt layer."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featinv.cli import app, main
from featinv.errors import FeatinvError

runner = CliRunner()


def test_layers_table_for_convnext_tiny() -> None:
    result = runner.invoke(app, ["layers", "timm:convnext_tiny"])
    assert result.exit_code == 0, result.output
    assert "timm:convnext_tiny layers at 224x224" in result.output
    default_rows = [line for line in result.output.splitlines() if "│ * " in line]
    assert len(default_rows) == 1 and "stages.3 " in default_rows[0] and "768×7×7" in default_rows[0]
    assert "stages.1 " in result.output and "192×28×28" in result.output


def test_layers_json_with_input_size_and_layer() -> None:
    result = runner.invoke(app, ["layers", "timm:convnext_atto", "--input-size", "64", "--layer", "stages.1",
                                 "--spatial-only", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["default"] == "stages.3" and data["layer"] == "stages.1"
    assert data["info"]["channels"] == 80 and data["info"]["grid"] == [8, 8] and data["info"]["stride"] == 8
    rows = {row["path"]: row for row in data["layers"]}
    assert rows["stages.3"]["is_default"] and rows["stages.3"]["shape"] == [320, 2, 2]
    assert "head.fc" not in rows  # --spatial-only hides vectors


def test_misspelt_layer_is_a_featinv_error_in_the_app() -> None:
    result = runner.invoke(app, ["layers", "timm:convnext_atto", "--input-size", "64", "--layer", "stage.3"])
    assert isinstance(result.exception, FeatinvError)


def test_misspelt_layer_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["layers", "timm:convnext_atto", "--input-size", "64", "--layer", "stage.3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "closest: stages.3" in err and "featinv layers timm:convnext_atto" in err
    assert "Traceback" not in err
