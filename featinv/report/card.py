"""The model card: a ``README.md`` in every run folder, in the Hugging Face format, so a run can be shared as it is.

It is rebuilt from what the folder holds (``config.json``, ``train_config.json``, ``train_state.json`` and
every ``eval/*/metrics.json``), so training and evaluation each just call :func:`write_model_card` after
writing their own files, and the card never disagrees with them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from featinv.io import write_text

CARD_NAME = "README.md"
#: how each reported metric is defined (the card states it next to the number)
METRIC_DEFINITIONS = {
    "cosine (per-image median, mean)": "cosine similarity of original and reconstruction feature vectors at each "
                                       "feature-map position; median over positions per image, mean over images",
    "cosine (median of all positions)": "the same cosines pooled over every position of every image, then the "
                                        "median (the paper's 'median of all superpixels')",
    "top-5 / top-1 match": "the classifier's top-1 class on the original is among its top-5 / is its top-1 on the "
                           "reconstruction",
    "FID": "Fréchet distance between originals and reconstructions in the labelled feature space",
}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _settings_table(settings: dict[str, Any]) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | {json.dumps(value) if isinstance(value, (list, dict)) else value} |"
              for key, value in settings.items() if value is not None]
    return lines


def _metric_lines(evaluations: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not evaluations:
        return ["Not evaluated yet: `featinv eval --run THIS_FOLDER --data VAL_DIR` adds its metrics here."]
    lines = ["| data | images | cosine (per-image median, mean) | cosine (median of all positions) | top-5 | top-1 | FID |",
             "|---|---|---|---|---|---|---|"]
    for name, summary in evaluations:
        def number(value: Any, percent: bool = False) -> str:
            if not isinstance(value, (int, float)):
                return "–"
            return f"{100 * value:.1f}%" if percent else f"{value:.3f}"

        pooled = (summary.get("cosine_sim_all_positions") or {}).get("median")
        fid = summary.get("fid") or {}
        lines.append(f"| {name} | {summary.get('n_images', '–')} | {number((summary.get('cosine_sim') or {}).get('mean'))} "
                     f"| {number(pooled)} | {number(summary.get('top5'), True)} | {number(summary.get('top1'), True)} "
                     f"| {number(fid.get('value'))}{' (' + fid['label'] + ')' if fid.get('label') else ''} |")
    lines += ["", "Definitions:", ""] + [f"- **{name}**: {text}" for name, text in METRIC_DEFINITIONS.items()]
    return lines


def model_card(run_dir: str | os.PathLike[str]) -> str:
    """The card's Markdown for ``run_dir`` (YAML front matter, then the model, its training and its metrics)."""
    run_dir = Path(run_dir)
    config = _read(run_dir / "config.json") or {}
    train = _read(run_dir / "train_config.json") or {}
    state = _read(run_dir / "train_state.json") or {}
    backbone, base = config.get("backbone") or {}, config.get("base") or {}
    evaluations = []
    for path in sorted(run_dir.glob("eval/*/metrics.json")):
        summary = (_read(path) or {}).get("summary")
        if isinstance(summary, dict) and summary:
            evaluations.append((path.parent.name, summary))
    spec = backbone.get("spec", train.get("backbone", "?"))
    grid = "×".join(str(v) for v in [backbone.get("channels"), *(backbone.get("grid") or [])] if v is not None)
    lines = ["---", "library_name: featinv", "tags:", "- feature-inversion", "- controlnet", "- featinv",
             f"base_model: {str(base.get('spec', train.get('base', ''))).removeprefix('sd:')}", "---", "",
             f"# FeatInv: {spec} ({'pooled' if config.get('pooled') else 'unpooled'})", "",
             "A ControlNet on a frozen diffusion base that maps the feature maps of a classifier back to images "
             "(FeatInv, arXiv 2505.21032). Load it with `featinv.FeatInv.from_pretrained(THIS_FOLDER)` or use "
             "`featinv reconstruct --run THIS_FOLDER`.", "",
             "## Model", "",
             f"- backbone: `{spec}`, weights `{backbone.get('weights', '?')}`, layer `{backbone.get('layer', '?')}`, "
             f"input {'×'.join(str(v) for v in backbone.get('input_size') or []) or '?'} px, feature map {grid or '?'}",
             f"- diffusion base: `{base.get('spec', '?')}` at {base.get('resolution', '?')} px (frozen)",
             f"- encoder: `{config.get('encoder', '?')}`; guidance scale {config.get('guidance_scale', '?')}",
             "", "## Training", ""]
    if train:
        lines += [f"- data: `{train.get('data')}`; status {state.get('status', '?')} at step {state.get('step', '?')} "
                  f"of {state.get('total_steps', '?')}", f"- preset: `{train.get('preset')}`" if train.get("preset")
                  else "- preset: none", "", *_settings_table(train)]
    else:
        lines.append("No training config in this folder.")
    lines += ["", "## Evaluation", "", *_metric_lines(evaluations), ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | os.PathLike[str]) -> Path:
    """(Re)write ``run_dir/README.md`` from the folder's files; returns its path."""
    path = Path(run_dir) / CARD_NAME
    write_text(path, model_card(run_dir))
    return path
