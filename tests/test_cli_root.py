"""The root CLI: version, help, plugin table, and the one-line error contract."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import featinv
from featinv.cli import app, main
from featinv.errors import FeatinvError

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and featinv.__version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "plugins" in result.output


def test_plugins_json_lists_every_kind():
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert set(listing["registered"]) == {"backbones", "bases", "encoders", "decomposers", "analyses"}


def test_featinv_error_is_one_line_exit_2(capsys):
    @app.command("fail-for-test", hidden=True)
    def fail_for_test() -> None:
        raise FeatinvError("something is wrong; do this instead")

    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["fail-for-test"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.strip() == "error: something is wrong; do this instead"
        assert "Traceback" not in err
        with pytest.raises(FeatinvError):
            main(["--debug", "fail-for-test"])
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "fail-for-test"]
        assert isinstance(app, typer.Typer)


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "featinv", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and featinv.__version__ in result.stdout
