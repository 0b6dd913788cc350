"""mkdocs hooks: generate the CLI reference from the Typer app, and show the demo's figures if present.

The CLI reference is never hand-copied: at build time :func:`cli_reference_markdown` walks the click
command tree that Typer builds from ``featinv.cli.app`` and writes, for every command, what its
``--help`` says (description, usage, arguments, options, example). ``docs/cli.md`` only holds a marker
that this hook replaces, so the page cannot drift from ``featinv --help``.

The Quickstart shows the demo's figures only when ``docs/img/`` holds them at build time (a missing
image would break ``mkdocs build --strict``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CLI_MARKER = "<!-- featinv-cli-reference -->"
FIGURES_MARKER = "<!-- featinv-demo-figures -->"
DOCS_DIR = Path(__file__).resolve().parent
IMG_DIR = DOCS_DIR / "img"

# Captions for figures the demo is expected to write; any other PNG in docs/img/ gets its file name.
FIGURE_CAPTIONS: dict[str, str] = {
    "reconstructions": "Held-out crops and their reconstructions from the unpooled and the pooled model, "
                       "with the cosine similarity of the feature maps.",
    "metrics": "The demo's Table 1 in small: cosine similarity, top-k match and KID/FID, unpooled vs pooled.",
    "steering": "FeatInv-Viz: where attenuating one concept changes the reconstruction, next to the coarse "
                "concept map and Grad-CAM.",
    "interpolation": "Reconstructions of weighted mixtures of two feature maps.",
    "composition": "Reconstructions of spatially composed feature maps (the pasted region outlined).",
    "compose": "Reconstructions of spatially composed feature maps (the pasted region outlined).",
}


# ---- the command tree ----------------------------------------------------------------------------
# Duck-typed on purpose: Typer builds click-style objects, and recent Typer versions vendor their own
# copy of click, so ``isinstance(x, click.Group)`` is not reliable. A group is anything with ``commands``.

def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _owned_by_featinv(command: Any) -> bool:
    """Commands that featinv itself defines; third-party plugin commands depend on what is installed."""
    module = getattr(command.callback, "__module__", None) or ""
    if module.startswith("featinv"):
        return True
    if _is_group(command):
        return any(_owned_by_featinv(sub) for sub in command.commands.values())
    return False


def walk_commands(group: Any = None, prefix: tuple[str, ...] = ("featinv",),
                  only_featinv: bool = True) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Yield ``(path, command)`` for every visible command below ``group`` (depth first, sorted).

    ``path`` is the full invocation, e.g. ``("featinv", "concepts", "fit")``. Groups are yielded before
    their subcommands. With ``only_featinv`` commands added by third-party plugins are left out.
    """
    if group is None:
        group = root_command()
    for name in sorted(group.commands):
        command = group.commands[name]
        if command.hidden or (only_featinv and not _owned_by_featinv(command)):
            continue
        path = (*prefix, name)
        yield path, command
        if _is_group(command):
            yield from walk_commands(command, path, only_featinv)


def root_command() -> Any:
    """The click-style group Typer builds from ``featinv.cli.app`` (what the ``featinv`` script runs)."""
    import typer

    from featinv.cli import app

    return typer.main.get_command(app)


# ---- rendering -------------------------------------------------------------------------------------

def _plain(text: str) -> str:
    """Strip rich markup the way the terminal help renders it (``[bold]x[/]`` -> ``x``)."""
    try:
        from rich.text import Text

        return Text.from_markup(text).plain
    except Exception:  # a literal '[' that is not markup: show the text as written
        return text


def _help_blocks(text: str) -> tuple[list[str], list[str]]:
    """Split a help text into prose paragraphs and example command lines."""
    prose: list[str] = []
    examples: list[str] = []
    for paragraph in re.split(r"\n\s*\n", _plain(text).replace("\b", "").strip()):
        rest: list[str] = []
        in_example = False
        for line in (line.strip() for line in paragraph.splitlines()):
            if not line:
                continue
            match = re.match(r"^Examples?:\s*(.*)$", line)
            if match:
                in_example = True
                if match.group(1):
                    examples.append(match.group(1))
            elif in_example and line.startswith(("featinv", "$ ", "python", "--")):
                examples.append(line.removeprefix("$ "))
            else:
                in_example = False
                rest.append(line)
        if rest:
            prose.append(" ".join(rest))
    return prose, examples


def _cell(text: str) -> str:
    """Text for a Markdown table cell: no pipes, no line breaks, no raw HTML."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;").strip()


def _summary(command: Any, limit: int = 160) -> str:
    """The first paragraph of a command's help, shortened at a word boundary (for the subcommand table)."""
    prose, _ = _help_blocks(command.help or "")
    text = prose[0] if prose else ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return text


def command_markdown(path: tuple[str, ...], command: Any, level: int = 2) -> str:
    """One command's section: heading, help text, usage, subcommands, parameters and examples."""
    import typer

    ctx = typer.Context(command, info_name=" ".join(path))
    out = [f"{'#' * level} `{' '.join(path)}` {{#{'-'.join(path)}}}", ""]
    prose, examples = _help_blocks(command.help or "")
    if command.epilog:
        more_prose, more_examples = _help_blocks(command.epilog)
        prose += more_prose
        examples += more_examples
    for paragraph in prose:  # help text is plain text, not HTML
        out += [paragraph.replace("<", "&lt;").replace(">", "&gt;"), ""]
    usage = " ".join([" ".join(path), *command.collect_usage_pieces(ctx)])
    out += ["```text", f"Usage: {usage}", "```", ""]
    if _is_group(command):
        visible = [(name, sub) for name, sub in sorted(command.commands.items()) if not sub.hidden]
        if visible:
            out += ["| command | what it does |", "|---|---|"]
            for name, sub in visible:
                anchor = "-".join((*path, name))
                out.append(f"| [`{name}`](#{anchor}) | {_cell(_summary(sub))} |")
            out.append("")
    records = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None and "--help" not in record[0].split():
            records.append(record)
    if records:
        out += ["| argument / option | description |", "|---|---|"]
        out += [f"| `{names.replace('|', '/')}` | {_cell(help_text)} |" for names, help_text in records]
        out.append("")
    if examples:
        out += ["Example:", "", "```bash", *examples, "```", ""]
    return "\n".join(out)


def cli_reference_markdown() -> str:
    """The whole CLI reference: the root command, then every (sub)command in tree order."""
    root = root_command()
    sections = [command_markdown(("featinv",), root, level=2)]
    for path, command in walk_commands(root):
        sections.append(command_markdown(path, command, level=min(len(path) + 1, 4)))
    return "\n\n".join(sections) + "\n"


# ---- demo figures ----------------------------------------------------------------------------------

def demo_figures_markdown(img_dir: Path = IMG_DIR) -> str:
    """Markdown for every PNG in ``docs/img`` (known demo figures first), or a note that none exist yet."""
    pngs = sorted(img_dir.glob("*.png")) if img_dir.is_dir() else []
    if not pngs:
        return ("*The demo's figures appear here once they are copied into `docs/img/`; run "
                "`featinv demo` to make them on your machine.*\n")
    order = list(FIGURE_CAPTIONS)
    pngs.sort(key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.name))
    out = []
    for png in pngs:
        caption = FIGURE_CAPTIONS.get(png.stem, png.stem.replace("_", " ").replace("-", " ").capitalize())
        out += [f"![{caption}](img/{png.name})", "", f"*{caption}*", ""]
    return "\n".join(out)


# ---- mkdocs entry points ---------------------------------------------------------------------------

PERFORMANCE_FALLBACK = """# Performance

No benchmark results are part of this build yet: neither CPU nor GPU timings have been measured
and recorded here. For GPU work, the paper's own figures are the best estimate (see
[Reproducing the paper](reproducing.md#time-and-hardware)).
"""


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: if ``performance.md`` (written by the benchmarks) is absent, say so on a generated page.

    The navigation always lists the page; without this a checkout made before the first benchmark
    run would fail ``mkdocs build --strict``.
    """
    if files.get_file_from_path("performance.md") is None:
        from mkdocs.structure.files import File

        files.append(File.generated(config, "performance.md", content=PERFORMANCE_FALLBACK))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs hook: fill the markers in cli.md and index.md."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference_markdown())
    if FIGURES_MARKER in markdown:
        markdown = markdown.replace(FIGURES_MARKER, demo_figures_markdown())
    return markdown
