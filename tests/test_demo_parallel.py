"""The demo's two-process helper: the result comes back, threads are restored, a failing side job is one clear error."""

from __future__ import annotations

import pytest
import torch

from featinv.apps import demo
from featinv.errors import FeatinvError


def write_marker(path: str) -> None:
    """Side job: prove it ran, single-threaded, in another process."""
    import os

    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()} {torch.get_num_threads()}")


def fail() -> None:
    raise RuntimeError("side job broke")


def test_side_by_side_runs_both_jobs_single_threaded_and_restores_threads(tmp_path):
    import os

    before = torch.get_num_threads()
    seen = {}

    def here() -> int:
        seen["threads"] = torch.get_num_threads()
        return 42

    marker = tmp_path / "marker"
    assert demo._side_by_side(here, write_marker, str(marker)) == 42
    pid, threads = marker.read_text().split()
    assert int(pid) != os.getpid() and int(threads) == 1 and seen["threads"] == 1
    assert torch.get_num_threads() == before


def test_a_failing_side_job_is_one_clear_error():
    with pytest.raises(FeatinvError, match=r"side process \(fail\) failed with exit code 1; rerun the demo"):
        demo._side_by_side(lambda: None, fail)
