"""`featinv.outputs`: the one resumable index (both on-disk layouts) and atomic PNG writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from featinv.errors import FeatinvError
from featinv.outputs import INDEX_VERSION, ResumableIndex, save_png


def _refuse(changed: list[str]) -> str:
    return f"other settings ({', '.join(changed) or 'version'})"


def test_versioned_index_round_trips_and_refuses_other_settings(tmp_path: Path) -> None:
    index = ResumableIndex(tmp_path / "index.json", {"steps": 2, "extra": ["a"]}, what="test index", ignored=("extra",))
    assert index.load(_refuse) == {}
    index.rows["x#s0"] = {"key": "x#s0", "value": 1}
    index.save()
    assert json.loads(index.path.read_text()) == {"version": INDEX_VERSION, "settings": {"steps": 2, "extra": ["a"]},
                                                  "rows": [{"key": "x#s0", "value": 1}]}
    again = ResumableIndex(index.path, {"steps": 2, "extra": ["b"]}, what="test index", ignored=("extra",))
    assert again.load(_refuse) == {"x#s0": {"key": "x#s0", "value": 1}}  # ignored settings may differ
    with pytest.raises(FeatinvError, match=r"other settings \(steps\)"):
        ResumableIndex(index.path, {"steps": 3, "extra": ["a"]}, what="test index").load(_refuse)
    index.path.write_text(json.dumps({"version": 99, "settings": {"steps": 2, "extra": ["a"]}, "rows": []}))
    with pytest.raises(FeatinvError, match=r"other settings \(version\)"):
        ResumableIndex(index.path, {"steps": 2, "extra": ["a"]}, what="test index").load(_refuse)


def test_flat_index_keeps_settings_at_the_top_level(tmp_path: Path) -> None:
    settings = {"run": "r", "steps": 2}
    index = ResumableIndex(tmp_path / "index.json", settings, what="test index", key="file", rows_field="items",
                           versioned=False)
    index.save([{"file": "a.png"}], unreadable=["b.png"])
    assert json.loads(index.path.read_text()) == {"run": "r", "steps": 2, "items": [{"file": "a.png"}],
                                                  "unreadable": ["b.png"]}
    assert ResumableIndex(index.path, settings, what="test index", key="file", rows_field="items",
                          versioned=False).load(_refuse) == {"a.png": {"file": "a.png"}}
    with pytest.raises(FeatinvError, match=r"other settings \(run, steps\)"):
        ResumableIndex(index.path, {"run": "s", "steps": 3}, what="test index", key="file", rows_field="items",
                       versioned=False).load(_refuse)


def test_save_png_writes_a_readable_png(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 3), (10, 20, 30))
    save_png(img, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as back:
        assert back.format == "PNG" and back.convert("RGB").tobytes() == img.tobytes()
