"""Registry and plugin-loading behaviour: filters, suggestions, duplicates, broken plugins, entry points."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from featinv import hookimpl
from featinv.errors import FeatinvError
from featinv.registry import DISABLE_AUTOLOAD_ENV, build_state


class _Plugin:
    """An in-memory plugin registering two decomposers and one backbone alias."""

    __name__ = "fake_pkg.plugin"

    @hookimpl
    def register_decomposers(self, register):
        register("alpha", lambda n_concepts=2: ("alpha", n_concepts), description="first")
        register("beta", lambda n_concepts=2: ("beta", n_concepts))

    @hookimpl
    def register_backbones(self, register):
        register("fake", lambda name, **kw: ("fake", name, kw))


def _write_dist(site: Path, dist: str, module: str, body: str) -> None:
    """An on-path .dist-info with an entry point in group featinv, as pip would install it."""
    (site / f"{module}.py").write_text(textwrap.dedent(body))
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[featinv]\n{module} = {module}\n")


def test_list_filter_sorted_and_create():
    state = build_state(extra_plugins=(_Plugin(),), autoload=False)
    registry = state.registries["decomposers"]
    names = registry.list("*")
    assert names == sorted(names) and {"alpha", "beta"} <= set(names)
    assert registry.list("b*") == ["beta"]
    assert registry.create("alpha", n_concepts=5) == ("alpha", 5)
    assert registry.is_registered("beta") and not registry.is_registered("gamma")
    backbones = state.registries["backbones"]
    assert backbones.create("fake:resnet", layer="x") == ("fake", "resnet", {"layer": "x"})
    assert backbones.is_registered("fake:anything")


def test_unknown_name_suggests_closest():
    state = build_state(extra_plugins=(_Plugin(),), autoload=False)
    with pytest.raises(FeatinvError, match=r"unknown decomposer 'alpah'.*'alpha'.*featinv plugins"):
        state.registries["decomposers"].create("alpah")


def test_empty_spec_argument_is_refused():
    state = build_state(extra_plugins=(_Plugin(),), autoload=False)
    with pytest.raises(FeatinvError, match="nothing after ':'"):
        state.registries["backbones"].create("fake:")


def test_duplicate_name_names_both_packages():
    class Other:
        __name__ = "other_pkg.plugin"

        @hookimpl
        def register_decomposers(self, register):
            register("alpha", lambda: None)

    with pytest.raises(FeatinvError, match=r"'alpha' is registered twice, by '.*' and '.*'"):
        build_state(extra_plugins=(_Plugin(), Other()), autoload=False)


def test_entry_point_discovery_broken_plugin_and_autoload_switch(tmp_path, monkeypatch):
    _write_dist(tmp_path, "good-plugin", "good_featinv_plugin", """
        from featinv import hookimpl

        @hookimpl
        def register_encoders(register):
            register("identity-test", lambda **kw: "built", description="from an entry point")
    """)
    _write_dist(tmp_path, "broken-plugin", "broken_featinv_plugin", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)

    state = build_state()
    encoders = state.registries["encoders"]
    assert encoders.create("identity-test") == "built"
    assert encoders.entries["identity-test"].package == "good-plugin"
    assert "broken_featinv_plugin" in state.errors
    assert "missing dependency xyz" in state.errors["broken_featinv_plugin"]

    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    state = build_state()
    assert not state.registries["encoders"].is_registered("identity-test")
    assert "broken_featinv_plugin" not in state.errors


def test_broken_register_hook_is_isolated():
    class Broken:
        __name__ = "broken.plugin"

        @hookimpl
        def register_analyses(self, register):
            raise RuntimeError("boom")

    state = build_state(extra_plugins=(Broken(), _Plugin()), autoload=False)
    assert any("boom" in reason for reason in state.errors.values())
    assert state.registries["decomposers"].is_registered("alpha")
