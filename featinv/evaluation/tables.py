"""Evaluation numbers as tables: the paper's Table 1/2/3 layouts in Markdown and rich, and reading them back.

``summary_markdown`` renders evaluation *summaries* (one row per run); it is not
:func:`featinv.report.figures.markdown_table`, which renders arbitrary dict rows.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featinv.errors import FeatinvError
from featinv.evaluation.cosine import TABLE_NOTE
from featinv.io import read_json

__all__ = [
    "baseline_markdown",
    "compare",
    "cross_markdown",
    "cross_rich_table",
    "load_summary",
    "markdown_table",
    "rich_table",
    "summary_markdown",
]


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _fmt_cos(cos: dict[str, Any]) -> str:
    mean, (low, high) = cos.get("mean"), cos.get("ci95", [None, None])
    if mean is None:
        return "n/a"
    if low is None or high is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {(high - low) / 2:.2f}"


def _table_rows(summaries: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    fid_labels = sorted({s["fid"]["label"] for s in summaries if s.get("fid")}) or ["FID"]
    kid_labels = sorted({s["kid"]["label"] for s in summaries if s.get("kid")})
    pixels = any(s.get("pixel_checks") for s in summaries)
    topk = any("top5" in s for s in summaries) or not summaries  # encoders without a classifier: no column
    pooled = any(s.get("cosine_sim_all_positions") for s in summaries)
    header = ["Model", "cosine-sim", *(["top5(1) match"] if topk else []), *fid_labels, *kid_labels,
              *(["cosine-sim (all positions)"] if pooled else []),
              *(["pixel MSE", "SSIM", "high-freq ratio"] if pixels else []), "n"]
    labels = [s.get("model", "?") for s in summaries]
    if len(set(labels)) < len(labels):  # e.g. one run at several guidance scales: tell the rows apart
        labels = [f"{lab} g={s.get('guidance_scale', '?'):g} {Path(str(s.get('data', ''))).name}".rstrip()
                  if isinstance(s.get("guidance_scale"), (int, float)) else lab for lab, s in zip(labels, summaries, strict=True)]
    rows = []
    for s, model_label in zip(summaries, labels, strict=True):
        cells = [model_label, _fmt_cos(s.get("cosine_sim", {}))]
        if topk:
            cells.append(f"{_fmt_pct(s.get('top5'))} ({_fmt_pct(s.get('top1'))})")
        for lab in fid_labels:
            value = (s.get("fid") or {}).get("value") if (s.get("fid") or {}).get("label") == lab else None
            cells.append("n/a" if value is None else f"{value:.2f}")
        for lab in kid_labels:
            kid = s.get("kid") or {}
            cells.append(f"{kid['mean']:.4f} ± {kid['std']:.4f}" if kid.get("label") == lab else "n/a")
        if pooled:
            median = (s.get("cosine_sim_all_positions") or {}).get("median")
            cells.append("n/a" if median is None else f"{median:.2f}")
        if pixels:
            cells += _pixel_cells(s.get("pixel_checks") or {})
        cells.append(str(s.get("n_images", "")) + ("" if s.get("complete", True) else " (partial)"))
        rows.append(cells)
    return header, rows


def _pixel_cells(checks: dict[str, Any]) -> list[str]:
    """Pixel MSE, SSIM and high-frequency ratio against the originals ("n/a" where not measured)."""
    return [f"{v:{fmt}}" if v is not None else "n/a"
            for v, fmt in ((checks.get("pixel_mse"), ".4f"), (checks.get("ssim"), ".3f"),
                           (checks.get("high_freq_ratio"), ".2f"))]


def summary_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """The paper's Table 1 layout (Model | cosine-sim | top5(1) match | FID) as Markdown.

    A substitute FID column is headed with its feature space, e.g. ``FID[timm:... pooled]``.
    """
    header, rows = _table_rows(summaries)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + f"\n\n{TABLE_NOTE}\n"


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """Deprecated alias of :func:`summary_markdown` (the name clashed with ``report.figures.markdown_table``)."""
    warnings.warn("featinv.evaluation markdown_table is deprecated; use featinv.evaluation.tables.summary_markdown",
                  DeprecationWarning, stacklevel=2)
    return summary_markdown(summaries)


def cross_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """Table 2 (cross-model top5 / top1) as Markdown, or "" when no run has cross-model numbers."""
    specs = list(dict.fromkeys(spec for s in summaries for spec in s.get("cross_model", {})))
    if not specs:
        return ""
    lines = ["", "Cross-model top5 / top1 match (rows: conditioned on; columns: evaluated by)", "",
             "| conditioned on | " + " | ".join(specs) + " |", "|---" * (len(specs) + 1) + "|"]
    for s in summaries:
        cm = s.get("cross_model", {})
        cells = [f"{_fmt_pct(cm[sp]['top5'])} / {_fmt_pct(cm[sp]['top1'])}" if sp in cm else "n/a" for sp in specs]
        lines.append(f"| {s.get('model', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(summaries: Sequence[dict[str, Any]], title: str = "FeatInv evaluation") -> Any:
    """The Table 1 layout as a rich Table (printed by the CLI)."""
    from rich.markup import escape
    from rich.table import Table

    header, rows = _table_rows(summaries)
    table = Table(title=title)
    for i, col in enumerate(header):  # escape: labels like FID[timm:...] are not rich markup
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*(escape(cell) for cell in r))
    return table


def cross_rich_table(summaries: Sequence[dict[str, Any]]) -> Any | None:
    """Table 2 (cross-model top5/top1) as a rich Table, or None when no run has cross-model numbers."""
    from rich.table import Table

    specs = list(dict.fromkeys(spec for s in summaries for spec in s.get("cross_model", {})))
    if not specs:
        return None
    table = Table(title="Cross-model match: top5 / top1 (evaluated by)")
    table.add_column("conditioned on")
    for spec in specs:
        table.add_column(spec, justify="right")
    for s in summaries:
        cm = s.get("cross_model", {})
        table.add_row(s.get("model", "?"), *[f"{_fmt_pct(cm[sp]['top5'])} / {_fmt_pct(cm[sp]['top1'])}" if sp in cm else "n/a"
                                             for sp in specs])
    return table


def load_summary(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Summaries from an evaluation folder, a metrics.json, or a run folder (all its ``eval/*/``)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif (path / "metrics.json").is_file():
        files = [path / "metrics.json"]
    else:
        files = sorted(path.glob("eval/*/metrics.json")) + sorted(path.glob("*/metrics.json"))
    if not files:
        raise FeatinvError(f"no metrics.json in {path}; run `featinv eval --run RUN --data DIR` first or pass its --out folder")
    summaries = []
    for file in files:
        data = read_json(file, what="metrics file")
        summary = data.get("summary", data) if isinstance(data, dict) else None
        if not isinstance(summary, dict) or "cosine_sim" not in summary:
            raise FeatinvError(f"{file} is not a featinv metrics file; pass an evaluation folder")
        summaries.append(summary)
    return summaries


def compare(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Summaries of several runs / evaluations, in the order given (one table row each)."""
    if not paths:
        raise FeatinvError("nothing to compare; pass one or more run or evaluation folders")
    return [s for p in paths for s in load_summary(p)]


def baseline_markdown(summary: dict[str, Any]) -> str:
    """Table 3's "MiniSD top5(1)" column: one row per backbone."""
    lines = ["| Model | base top5(1) | n |", "|---|---|---|"]
    for spec, s in summary["backbones"].items():
        lines.append(f"| {spec} | {_fmt_pct(s['top5'])} ({_fmt_pct(s['top1'])}) | {summary['n_images']} |")
    return "\n".join(lines) + "\n"
