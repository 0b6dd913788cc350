"""`featinv.evaluation.evaluate` end to end on tiny runs: metrics files, resume, sharding, pooled runs, sweep, compare."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from featinv.errors import FeatinvError
from featinv.evaluation import evaluate as evaluation
from featinv.evaluation import sources as evaluation_sources
from featinv.evaluation import tables
from tests.fixtures_model import make_tiny_images, make_tiny_run

FAST = {"steps": 2, "batch_size": 4, "fid": "backbone", "progress": False}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"unpooled": make_tiny_run(root / "u"), "pooled": make_tiny_run(root / "p", pooled=True)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_tiny_images(root / "cat", count=3)
    make_tiny_images(root / "dog", count=2, size=20)
    return root


@pytest.fixture()
def count_reconstructions(monkeypatch) -> list[int]:
    """Record how many images every FeatInv.reconstruct call makes."""
    from featinv.diffusion.model import FeatInv

    calls: list[int] = []
    original = FeatInv.reconstruct

    def counting(self, features=None, **kwargs):
        calls.append(int(features.shape[0]))
        return original(self, features=features, **kwargs)

    monkeypatch.setattr(FeatInv, "reconstruct", counting)
    return calls


def test_shard_is_disjoint_and_complete() -> None:
    items = list(range(11))
    parts = [evaluation_sources.shard(items, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert [len(p) for p in parts] == [4, 4, 3]
    assert evaluation_sources.shard(items, 0, 1) == items
    with pytest.raises(FeatinvError):
        evaluation_sources.shard(items, 3, 3)


def test_collect_sources_per_class_flat_and_in_memory(data: Path, tmp_path: Path) -> None:
    sources = evaluation_sources.collect_sources(data, per_class=2)
    assert [(s.label, s.name) for s in sources] == [
        ("cat", "cat/img0.png"), ("cat", "cat/img1.png"), ("dog", "dog/img0.png"), ("dog", "dog/img1.png")]
    flat = evaluation_sources.collect_sources(data / "cat", per_class=None)
    assert {s.label for s in flat} == {"cat"} and len(flat) == 3
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    mem = evaluation_sources.collect_sources([("a/x", img), ("b", img)], per_class=1)
    assert [(s.label, s.name) for s in mem] == [("a", "a/x"), ("images", "b")]
    with pytest.raises(FeatinvError, match="twice"):
        evaluation_sources.collect_sources([("b", img), ("b", img)])
    with pytest.raises(FeatinvError, match="does not exist"):
        evaluation_sources.collect_sources(tmp_path / "missing")


def test_evaluate_writes_outputs_and_resumes(runs, data, tmp_path, count_reconstructions) -> None:
    out = tmp_path / "eval"
    first = evaluation.evaluate(runs["unpooled"], data, out=out, per_class=1, seeds=[0, 1], limit=3, **FAST)
    assert sum(count_reconstructions) == 3
    assert not first.summary["complete"] and first.summary["n_images"] == 3
    index = json.loads((out / "index.json").read_text())
    assert len(index["rows"]) == 3 and all((out / r["file"]).is_file() for r in index["rows"])

    count_reconstructions.clear()
    result = evaluation.evaluate(runs["unpooled"], data, out=out, per_class=1, seeds=[0, 1], **FAST)
    assert sum(count_reconstructions) == 4 - 3  # finished images were not redone
    s = result.summary
    assert s["complete"] and s["n_images"] == 4 and s["n_sources"] == 2 and s["classes"] == 2
    assert [r["key"] for r in result.rows][:3] == [r["key"] for r in first.rows]
    assert {(r["source"], r["seed"]) for r in result.rows} == {(f"{c}/img{i}.png", sd) for c in ("cat", "dog")
                                                               for i in (0,) for sd in (0, 1)}
    assert -1.0 <= result.cos_mean <= 1.0 and result.cos_ci[0] <= result.cos_mean <= result.cos_ci[1]
    assert result.top5 == sum(r["top5"] for r in result.rows) / 4 and result.top1 <= result.top5
    from featinv.evaluation.metrics import rate_ci95

    for k in ("top5", "top1"):  # Wilson intervals of the rates, from the same hits
        assert s[f"{k}_ci95"] == list(rate_ci95(sum(r[k] for r in result.rows), 4))
    assert result.fid_label == "FID[timm:tf_efficientnet_lite0 pooled]" and result.fid is not None
    assert result.kid_label == "KID[timm:tf_efficientnet_lite0 pooled]"

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["summary"]["top1"] == s["top1"] and len(saved["rows"]) == 4
    with open(out / "metrics.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    table = (out / "metrics.md").read_text()
    assert "| Model | cosine-sim | top5(1) match | FID[timm:tf_efficientnet_lite0 pooled] |" in table

    count_reconstructions.clear()
    again = evaluation.evaluate(runs["unpooled"], data, out=out, per_class=1, seeds=[0, 1], **FAST)
    assert count_reconstructions == [] and again.summary["top1"] == s["top1"]
    with pytest.raises(FeatinvError, match="other settings"):
        evaluation.evaluate(runs["unpooled"], data, out=out, per_class=1, seeds=[0, 1], guidance_scale=3.0, **FAST)


def test_two_process_shards_merge_on_rank_zero(runs, data, tmp_path, monkeypatch, count_reconstructions) -> None:
    # Simulate `accelerate launch --num_processes 2`: rank 1 finishes first and only writes its index;
    # rank 0 does its half and merges both into one summary.
    out = tmp_path / "sharded"
    monkeypatch.setattr(evaluation, "process_group", lambda *_: (1, 2, lambda: None))
    part = evaluation.evaluate(runs["unpooled"], data, out=out, per_class=1, seeds=[0, 1], **FAST)
    assert part.summary == {} and len(part.rows) == 2 and (out / "index-rank1-of-2.json").is_file()
    monkeypatch.setattr(evaluation, "process_group", lambda *_: (0, 2, lambda: None))
    merged = evaluation.evaluate(runs["unpooled"], data, out=out, per_class=1, seeds=[0, 1], **FAST)
    assert count_reconstructions == [2, 2]
    assert merged.summary["complete"] and merged.summary["n_images"] == 4
    keys = {r["key"] for r in merged.rows}
    assert keys == {f"{c}/img0.png#s{sd}" for c in ("cat", "dog") for sd in (0, 1)}
    assert {r["key"] for r in part.rows} < keys
    assert (out / "metrics.json").is_file()


def test_pooled_run_is_scored_on_unpooled_maps(runs, data, monkeypatch) -> None:
    from featinv.evaluation import metrics

    seen: list[torch.Tensor] = []
    real = metrics.cosine_median

    def spy(f_orig, f_rec):
        seen.append(f_orig)
        return real(f_orig, f_rec)

    monkeypatch.setattr(metrics, "cosine_median", spy)
    result = evaluation.evaluate(runs["pooled"], data, per_class=1, **FAST)
    assert result.summary["pooled"] and "(pooled)" in result.summary["model"]
    f_orig = seen[0]
    assert f_orig.shape[-2:] != (1, 1)
    spread = (f_orig - f_orig.mean(dim=(2, 3), keepdim=True)).abs().amax()
    assert spread > 1e-3  # the original map compared is not the pooled (constant) one


def test_in_memory_items_and_cross_model(runs) -> None:
    gen = torch.Generator().manual_seed(3)
    items = [(f"photo{i}", Image.fromarray((torch.rand(20, 28, 3, generator=gen) * 255).byte().numpy()))
             for i in range(3)]
    result = evaluation.evaluate(runs["unpooled"], items, per_class=None,
                                 evaluate_with=["timm:test_convnext"], evaluate_weights=["none"], **FAST)
    assert result.out is None and len(result.images) == len(result.rows) == 3
    assert all(isinstance(im, Image.Image) for im in result.images)
    cross = result.summary["cross_model"]["timm:test_convnext"]
    assert 0.0 <= cross["top1"] <= cross["top5"] <= 1.0
    assert all("timm:test_convnext" in r["cross"] for r in result.rows)
    assert "Cross-model" in tables.cross_markdown([result.summary])


def test_compare_reads_runs_and_eval_folders(runs, data, tmp_path) -> None:
    for kind in ("unpooled", "pooled"):
        evaluation.evaluate(runs[kind], data / "dog", out=runs[kind] / "eval" / "dog", per_class=1, **FAST)
    summaries = tables.compare([runs["unpooled"], runs["pooled"] / "eval" / "dog"])
    assert [s["pooled"] for s in summaries] == [False, True]
    table = tables.summary_markdown(summaries)
    assert "(unpooled)" in table and "(pooled)" in table
    same = tables.summary_markdown([summaries[0], {**summaries[0], "guidance_scale": 3.0}])
    assert "g=1.75 dog" in same and "g=3 dog" in same
    with pytest.raises(FeatinvError, match="no metrics.json"):
        tables.compare([tmp_path])
    with pytest.warns(DeprecationWarning, match="summary_markdown"):
        assert tables.markdown_table(summaries) == table  # the old name stays for one release


def test_corrupt_and_truncated_images_are_skipped_and_counted(runs, tmp_path) -> None:
    root = tmp_path / "mixed"
    make_tiny_images(root / "cat", count=2)
    (root / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    png = (root / "cat" / "img0.png").read_bytes()
    (root / "cat" / "truncated.png").write_bytes(png[: len(png) // 3])
    result = evaluation.evaluate(runs["unpooled"], root, out=tmp_path / "eval", per_class=None, **FAST)
    assert result.summary["n_images"] == 2 and result.summary["complete"]
    assert result.summary["skipped_unreadable"] == ["cat/corrupt.png", "cat/truncated.png"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())["summary"]
    assert saved["skipped_unreadable"] == result.summary["skipped_unreadable"]
