"""Registry and plugin-loading behaviour: filters, suggestions, duplicates, broken plugins, entry points,
per-kind contracts checked at registration."""

from __future__ import annotations

import re

import pytest

from featinv import hookimpl
from featinv.errors import FeatinvError
from featinv.registry import DISABLE_AUTOLOAD_ENV, build_state


class _Plugin:
    """An in-memory plugin registering three backbones (backbone factories are plain callables)."""

    __name__ = "fake_pkg.plugin"

    @hookimpl
    def register_backbones(self, register):
        register("alpha", lambda n_concepts=2: ("alpha", n_concepts), description="first")
        register("beta", lambda n_concepts=2: ("beta", n_concepts))
        register("fake", lambda name, **kw: ("fake", name, kw))


def test_list_filter_sorted_and_create():
    state = build_state(extra_plugins=(_Plugin(),), autoload=False)
    registry = state.registries["backbones"]
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
    with pytest.raises(FeatinvError, match=r"unknown backbone 'alpah'.*'alpha'.*featinv plugins"):
        state.registries["backbones"].create("alpah")


def test_empty_spec_argument_is_refused():
    state = build_state(extra_plugins=(_Plugin(),), autoload=False)
    with pytest.raises(FeatinvError, match="nothing after ':'"):
        state.registries["backbones"].create("fake:")


def test_duplicate_name_disables_the_later_package_and_names_both():
    class Other:
        __name__ = "other_pkg.plugin"

        @hookimpl
        def register_backbones(self, register):
            register("alpha", lambda: None)

        @hookimpl
        def register_bases(self, register):
            register("other-base", lambda path, device="cpu": None)

    state = build_state(extra_plugins=(_Plugin(), Other()), autoload=False)
    reason = state.errors["other_pkg"]
    assert "'alpha' is registered by both 'fake_pkg' and 'other_pkg'" in reason and "\n" not in reason
    assert state.registries["backbones"].create("alpha") == ("alpha", 2)  # the first package keeps working
    assert not state.registries["bases"].is_registered("other-base")  # the whole later package is off
    with pytest.raises(FeatinvError, match="base 'other-base' is unavailable: plugin package 'other_pkg' is disabled"):
        state.registries["bases"].create("other-base:x")


def test_package_registering_a_builtin_name_is_disabled_not_the_builtin():
    class Clash:
        __name__ = "clash_pkg"

        @hookimpl
        def register_backbones(self, register):
            register("timm", lambda name, **kw: None)

    state = build_state(extra_plugins=(Clash(),), autoload=False)
    assert state.registries["backbones"].entries["timm"].package == "featinv"
    assert "registered by both 'featinv' and 'clash_pkg'" in state.errors["clash_pkg"]


def test_entry_point_discovery_broken_plugin_and_autoload_switch(install_plugin, monkeypatch):
    install_plugin("good-plugin", "good_featinv_plugin", """
        from featinv import hookimpl

        @hookimpl
        def register_backbones(register):
            register("identity-test", lambda **kw: "built", description="from an entry point")
    """)
    install_plugin("broken-plugin", "broken_featinv_plugin", "raise ImportError('missing dependency xyz')\n")

    state = build_state()
    backbones = state.registries["backbones"]
    assert backbones.create("identity-test") == "built"
    assert backbones.entries["identity-test"].package == "good-plugin"
    assert "broken_featinv_plugin" in state.errors
    assert "missing dependency xyz" in state.errors["broken_featinv_plugin"]

    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    state = build_state()
    assert not state.registries["backbones"].is_registered("identity-test")
    assert "broken_featinv_plugin" not in state.errors


def test_raising_hook_disables_its_whole_package():
    class Broken:
        __name__ = "broken_pkg.plugin"

        @hookimpl
        def register_backbones(self, register):
            register("half", lambda name, **kw: None)

        @hookimpl
        def register_analyses(self, register):
            raise RuntimeError("boom")

    state = build_state(extra_plugins=(Broken(), _Plugin()), autoload=False)
    assert any("boom" in reason for reason in state.errors.values())
    assert "RuntimeError: boom in register_analyses" in state.errors["broken_pkg"]
    assert not state.registries["backbones"].is_registered("half")  # no half-registered plugin
    assert state.registries["backbones"].is_registered("alpha")


def _contract_plugin(kind: str, make_factory):
    class Plugin:
        __name__ = f"bad_{kind}_pkg"

    def hook(self, register):
        register("thing", make_factory())

    setattr(Plugin, f"register_{kind}", hookimpl(hook))
    hook.__name__ = f"register_{kind}"
    return Plugin()


def _encoder_without_config():
    from featinv.diffusion.encoders import FeatureEncoder

    class NoConfig(FeatureEncoder):
        encoder_name = "thing"

        def __init__(self, in_channels: int = 1, out_channels: int = 1, grid=(2, 2)) -> None:
            super().__init__()

    return NoConfig


def _encoder_with_wrong_name():
    from featinv.diffusion.encoders import FeatureEncoder

    class WrongName(FeatureEncoder):
        encoder_name = "other"

    return WrongName


def _decomposer_without_name():
    from featinv.concepts.base import Decomposer

    class Nameless(Decomposer):
        def _fit(self, x): ...
        def _concept_parts(self, x): ...
        def _state(self): ...
        def _load_state(self, tensors): ...

    return Nameless


def _abstract_analysis():
    from featinv.analyses.base import Analysis

    class Unfinished(Analysis):
        name = "thing"

    return Unfinished


@pytest.mark.parametrize(("kind", "make_factory", "message"), [
    ("encoders", lambda: (lambda **config: None), r"must be a class subclassing featinv\.diffusion\.encoders\.FeatureEncoder"),
    ("encoders", _encoder_with_wrong_name, r"must set the class attribute encoder_name = 'thing' \(it is 'other'\)"),
    ("encoders", _encoder_without_config, r"must decorate __init__ with diffusers' @register_to_config"),
    ("decomposers", lambda: dict, r"must be a class subclassing featinv\.concepts\.base\.Decomposer"),
    ("decomposers", _decomposer_without_name, r"must set the class attribute name = 'thing' \(it is ''\)"),
    ("analyses", lambda: object, r"must be a class subclassing featinv\.analyses\.base\.Analysis"),
    ("analyses", _abstract_analysis, r"leaves abstract methods unimplemented: compute, figure, settings"),
    ("backbones", lambda: "not callable", r"is a str, not a callable factory"),
])
def test_broken_contract_is_one_line_naming_the_package_at_registration(kind, make_factory, message):
    state = build_state(extra_plugins=(_contract_plugin(kind, make_factory),), autoload=False)
    reason = state.errors[f"bad_{kind}_pkg"]
    assert reason.startswith(f"plugin package 'bad_{kind}_pkg' is disabled: ") and "\n" not in reason
    assert re.search(message, reason), reason
    assert not state.registries[kind].is_registered("thing")
    with pytest.raises(FeatinvError, match=f"unavailable: plugin package 'bad_{kind}_pkg' is disabled"):
        state.registries[kind].create("thing")


def test_builtins_keep_their_contracts():
    state = build_state(autoload=False)
    assert state.errors == {} and state.disabled == set()
    assert {"conv", "perceiver"} <= set(state.registries["encoders"].list())
    assert {"steering", "interpolation", "compose"} <= set(state.registries["analyses"].list())
