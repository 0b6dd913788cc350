"""The documentation site: the generated CLI reference, every command's example, and that the docs only
use commands and options that exist (so a renamed flag breaks a test, not a reader's copy-paste)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# pages written for this issue; plugins.md and performance.md have their own authors and tools' flags
OWN_PAGES = ("index.md", "concepts.md", "reproducing.md", "troubleshooting.md", "api.md", "cli.md")


def _load_hooks():
    spec = importlib.util.spec_from_file_location("featinv_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def _invokable(command) -> bool:
    """Leaf commands, and groups that run something themselves (``invoke_without_command``)."""
    return not hooks._is_group(command) or bool(getattr(command, "invoke_without_command", False))


@pytest.fixture(scope="module")
def reference() -> str:
    return hooks.cli_reference_markdown()


def test_reference_has_every_command(reference: str) -> None:
    paths = [path for path, _ in hooks.walk_commands()]
    assert len(paths) >= 2
    for path in paths:
        heading = f"`{' '.join(path)}` {{#{'-'.join(path)}}}"
        assert heading in reference, f"{' '.join(path)} missing from the generated CLI reference"


def test_reference_has_every_option(reference: str) -> None:
    import typer

    for path, command in hooks.walk_commands():
        ctx = typer.Context(command, info_name=" ".join(path))
        section = reference.split(f"{{#{'-'.join(path)}}}", 1)[1].split("{#featinv-", 1)[0]
        for param in command.get_params(ctx):
            if param.hidden or param.param_type_name != "option" or "--help" in param.opts:
                continue
            assert param.opts[0] in section, f"{param.opts[0]} of {' '.join(path)} missing from the reference"


def test_cli_page_is_generated_not_copied() -> None:
    text = (DOCS / "cli.md").read_text()
    assert hooks.CLI_MARKER in text
    assert "Usage:" not in text  # the hook writes the commands; nothing is hand-copied


def test_hook_fills_markers() -> None:
    page = f"a\n{hooks.CLI_MARKER}\nb\n{hooks.FIGURES_MARKER}\n"
    out = hooks.on_page_markdown(page, page=None, config=None, files=None)
    assert hooks.CLI_MARKER not in out and hooks.FIGURES_MARKER not in out
    assert "## `featinv`" in out


def test_every_command_help_has_an_example() -> None:
    from featinv.cli import app

    runner = CliRunner()
    missing = []
    for path, command in hooks.walk_commands():
        if not _invokable(command):
            continue
        result = runner.invoke(app, [*path[1:], "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        if "Example:" not in result.output:
            missing.append(" ".join(path))
    assert not missing, f"commands whose --help has no 'Example:': {missing}"


def test_demo_figures_only_when_present(tmp_path: Path) -> None:
    assert "](img/" not in hooks.demo_figures_markdown(tmp_path / "absent")
    (tmp_path / "steering.png").write_bytes(b"")
    (tmp_path / "reconstructions.png").write_bytes(b"")
    (tmp_path / "extra_plot.png").write_bytes(b"")
    text = hooks.demo_figures_markdown(tmp_path)
    links = re.findall(r"\(img/([^)]+)\)", text)
    assert links == ["reconstructions.png", "steering.png", "extra_plot.png"]


# ---- the docs use only commands and options that exist ----------------------------------------

def _code_blocks(text: str) -> list[str]:
    """Bodies of fenced shell code blocks (bash, sh, console or no language)."""
    blocks, body, lang = [], None, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and body is None:
            body, lang = [], fence.group(1)
        elif fence:
            if lang in ("", "bash", "sh", "console", "shell"):
                blocks.append("\n".join(body))
            body = None
        elif body is not None:
            body.append(line)
    return blocks


def _doc_commands() -> list[tuple[str, str]]:
    """(page, command line) for every ``featinv ...`` invocation in a shell code block or inline code."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        for block in _code_blocks(text):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                match = re.search(r"(?:^|\s|/|-m )featinv(\s.*)?$", line)
                if match and not line.startswith(("import", "from", "pip")):
                    found.append((page.name, "featinv" + (match.group(1) or "")))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`(featinv [^`]+)`", prose):
            found.append((page.name, span))
    return found


def _resolve(tokens: list[str]):
    """Walk the command tree along ``tokens``; return (command path, command, remaining tokens)."""
    command = hooks.root_command()
    path = ["featinv"]
    rest = list(tokens)
    while rest and hooks._is_group(command):
        token = rest[0]
        if token in ("--debug", "--version", "--help", "-h"):
            rest.pop(0)
            continue
        if token in command.commands:
            command = command.commands[token]
            path.append(rest.pop(0))
            continue
        break
    return path, command, rest


def test_docs_use_only_existing_commands_and_options() -> None:
    import typer

    commands = _doc_commands()
    assert len(commands) > 10
    problems = []
    for page, line in commands:
        tokens = shlex.split(line)[1:]
        path, command, rest = _resolve(tokens)
        if hooks._is_group(command) and not _invokable(command) and rest and not rest[0].startswith("-") \
                and rest[0].isidentifier() and rest[0].islower():
            problems.append(f"{page}: `{line}`: {' '.join(path)} has no subcommand {rest[0]!r}")
            continue
        if len(path) == 1 and rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
            if page == "plugins.md":  # documents a third-party plugin's own command
                continue
            problems.append(f"{page}: `{line}`: no command {rest[0]!r}")
            continue
        ctx = typer.Context(command, info_name=" ".join(path))
        known = {"--help", "-h"}
        for param in command.get_params(ctx):
            known.update(param.opts)
            known.update(param.secondary_opts)
        for token in rest:
            if token.startswith("-") and not re.fullmatch(r"-?\d[\d.,]*", token):
                name = token.split("=", 1)[0]
                if name not in known and "..." not in name:
                    problems.append(f"{page}: `{line}`: {' '.join(path)} has no option {name}")
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="the docs extra is not installed (CI builds the site in its own step)")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    result = subprocess.run([*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cli_html = (tmp_path / "site" / "cli" / "index.html").read_text()
    for path, _ in hooks.walk_commands():
        assert f'id="{"-".join(path)}"' in cli_html


# ---- every public function and class says what it is for ----------------------------------------

def _public_modules() -> list[str]:
    import pkgutil

    import featinv

    names = ["featinv"]
    for info in pkgutil.walk_packages(featinv.__path__, "featinv."):
        if info.name.endswith("__main__") or any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        names.append(info.name)
    return names


def _undocumented(module_name: str) -> list[str]:
    """Public functions, classes and methods defined in ``module_name`` without a docstring.

    A method that overrides a documented one inherits its docstring (``inspect.getdoc``); plugin hook
    implementations are documented by their hook specification, ``forward`` by its module class and a
    CLI module's ``register(app)`` by the CLI contract.
    """
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    missing = [] if module.__doc__ else [f"{module_name} (module)"]
    exported = getattr(module, "__all__", None)
    for name, obj in vars(module).items():
        if name.startswith("_") or (exported is not None and name not in exported):
            continue
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, "__module__", None) != module_name:
            continue
        if hasattr(obj, "featinv_impl") or (module_name.startswith("featinv.cli.") and name == "register"):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or attr == "forward" or not inspect.isfunction(member) \
                        or member.__name__ == "<lambda>":  # a dataclass field's default, not a method
                    continue
                if not inspect.getdoc(getattr(obj, attr)):
                    missing.append(f"{module_name}.{name}.{attr}")
    return missing


def test_public_api_has_docstrings() -> None:
    missing = [name for module in _public_modules() for name in _undocumented(module)]
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)


def test_every_option_named_in_prose_exists() -> None:
    """A ``--flag`` written anywhere in the docs is an option of some featinv command or example script."""
    import importlib.util as iu

    import typer

    known = {"--help", "--version", "--debug"}
    for path, command in [(("featinv",), hooks.root_command()), *hooks.walk_commands()]:
        ctx = typer.Context(command, info_name=" ".join(path))
        for param in command.get_params(ctx):
            known.update(param.opts)
            known.update(param.secondary_opts)
    for script in (ROOT / "examples").glob("*.py"):
        spec = iu.spec_from_file_location(f"docs_check_{script.stem}", script)
        module = iu.module_from_spec(spec)
        spec.loader.exec_module(module)
        known.update(opt for action in module.build_parser()._actions for opt in action.option_strings)
    other_tools = {"--strict", "--site-dir", "--local-dir", "--num_processes"}  # mkdocs, huggingface-cli, accelerate
    unknown = set()
    for page in sorted(DOCS / name for name in OWN_PAGES):
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-_]*)", page.read_text()):
            if flag not in known and flag not in other_tools:
                unknown.add(f"{page.name}: {flag}")
    assert not unknown, sorted(unknown)


def test_python_snippets_run() -> None:
    """The Python snippets on the docs pages run as written (those that need a trained run are skipped)."""
    ran = 0
    for name in OWN_PAGES:
        text = (DOCS / name).read_text()
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            if "runs/" in block:  # needs a trained model on disk
                continue
            exec(compile(block, f"docs/{name}", "exec"), {"__name__": f"docs_{name}"})
            ran += 1
    assert ran >= 2


def test_api_page_names_exist() -> None:
    """Every ``::: module`` on the API page imports and every member it lists exists (mkdocstrings would
    silently drop a renamed one)."""
    import importlib

    text = (DOCS / "api.md").read_text()
    blocks = re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", text, flags=re.M)
    assert len(blocks) >= 10
    for module_name, options in blocks:
        module = importlib.import_module(module_name)
        members = re.findall(r"^        - (\w+)$", options, flags=re.M)
        missing = [m for m in members if not hasattr(module, m)]
        assert not missing, f"{module_name} has no {missing}"
