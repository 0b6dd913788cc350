"""Test-wide settings: offline, seeded, quiet."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state, so results are deterministic."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
