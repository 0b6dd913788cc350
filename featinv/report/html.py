"""The offline HTML report: sections of text, tables and embedded figures in one self-contained page."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featinv.io import write_text
from featinv.report.figures import format_cell


@dataclass(frozen=True)
class InlineImage:
    """A PNG held in memory (e.g. the explorer's panels), embedded like a figure file under ``name``."""

    name: str
    png: bytes


@dataclass
class Section:
    """One part of an HTML report: a heading, paragraphs, a table and figures (files or in-memory PNGs)."""

    heading: str
    paragraphs: list[str] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path | InlineImage] = field(default_factory=list)


def _img_tag(figure: Path | InlineImage) -> str:
    name, png = (figure.name, figure.png) if isinstance(figure, InlineImage) else (figure.name, Path(figure).read_bytes())
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>'


def _table_html(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(col)}</th>" for col in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(row.get(col)))}</td>" for col in columns) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html_report(path: str | os.PathLike[str], title: str, sections: Sequence[Section]) -> Path:
    """Write a self-contained HTML page (figures embedded) that opens offline in any browser."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}"
        "th{background:#eee}img{max-width:100%}figure{margin:1em 0}figcaption{color:#666;font-size:85%}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
        if section.table:
            parts.append(_table_html(section.table))
        parts += [_img_tag(figure) for figure in section.figures]
    parts.append("</body></html>")
    path = Path(path)
    write_text(path, "\n".join(parts))
    return path
