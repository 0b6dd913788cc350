"""The root CLI: version, help, plugin table, the one-line error contract, and broken plugin packages that
leave the rest of the CLI working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import featinv
from featinv import registry
from featinv.cli import app, main
from featinv.cli.plugins import add_plugin_commands
from featinv.errors import FeatinvError
from featinv.registry import DISABLE_AUTOLOAD_ENV

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


def _plugin_body(backbones: tuple[str, ...], command: str, fail_commands: bool = False) -> str:
    """A plugin module registering ``backbones`` (plain callables) and one command printing its name."""
    names = ", ".join(repr(name) for name in backbones)
    failure = "    raise RuntimeError('no commands today')\n" if fail_commands else ""
    return (
        "from featinv import hookimpl\n\n"
        "@hookimpl\n"
        "def register_backbones(register):\n"
        f"    for name in ({names},):\n"
        "        register(name, lambda model_name=None, **kw: model_name)\n\n"
        "@hookimpl\n"
        "def register_commands(app):\n"
        f"    @app.command({command!r})\n"
        "    def hello() -> None:\n"
        f"        print({command!r} + ' ran')\n"
        f"{failure}"
    )


def _featinv(site, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != DISABLE_AUTOLOAD_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])])
    return subprocess.run([sys.executable, "-m", "featinv", *args], env=env, capture_output=True, text=True, check=False)


def test_name_collision_between_installed_packages_keeps_the_cli_working(install_plugin):
    install_plugin("clash-a", "clash_a_plugin", _plugin_body(("clash",), "clash-a-hello"))
    site = install_plugin("clash-b", "clash_b_plugin", _plugin_body(("clash", "only-b"), "clash-b-hello"))

    helped = _featinv(site, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "Traceback" not in helped.stderr and "plugins" in helped.stdout

    listed = _featinv(site, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    reason = listing["errors"]["clash-b"]
    assert "'clash' is registered by both 'clash-a' and 'clash-b'" in reason and "\n" not in reason
    assert listing["disabled"] == ["clash-b"]
    backbones = {entry["name"]: entry["package"] for entry in listing["registered"]["backbones"]}
    assert backbones["clash"] == "clash-a" and "only-b" not in backbones  # the later package is off as a whole

    refused = _featinv(site, "clash-b-hello")  # only the command that needs the disabled package fails
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "plugin package 'clash-b' is disabled" in refused.stderr

    registry.reset()
    fresh = typer.Typer()
    fresh.command("noop")(lambda: None)
    add_plugin_commands(fresh)
    result = runner.invoke(fresh, ["clash-a-hello"])
    assert result.exit_code == 0 and "clash-a-hello ran" in result.output


def test_raising_register_commands_disables_its_package(install_plugin, monkeypatch):
    monkeypatch.setattr(registry, "_DISABLED_ELSEWHERE", {})
    install_plugin("cmd-broken", "cmd_broken_plugin", _plugin_body(("c-net",), "broken-hello", fail_commands=True))
    registry.reset()
    assert registry.is_backbone("c-net")

    fresh = typer.Typer()
    fresh.command("noop")(lambda: None)
    add_plugin_commands(fresh)
    assert [info.name for info in fresh.registered_commands] == ["noop"]  # its half-added command is undone
    reason = registry.plugin_errors()["cmd-broken"]
    assert "RuntimeError: no commands today in register_commands" in reason
    assert not registry.is_backbone("c-net")
    with pytest.raises(FeatinvError, match="backbone 'c-net' is unavailable: plugin package 'cmd-broken' is disabled"):
        registry.create_backbone("c-net:x")
    registry.reset()
    assert not registry.is_backbone("c-net")  # stays disabled when the registries are rebuilt
