"""Training data and checkpoints: discovery, augmentation, sharding and atomic checkpoint files (no models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from featinv.errors import FeatinvError
from featinv.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from featinv.training.data import (
    AugmentedCrops,
    Schedule,
    ShardedBatches,
    load_training_images,
    make_crops,
)


def _folder(tmp_path, n=5, size=(40, 30)):
    rng = np.random.default_rng(0)
    (tmp_path / "cls_a").mkdir(parents=True)
    (tmp_path / "cls_b").mkdir()
    for i in range(n):
        sub = "cls_a" if i % 2 else "cls_b"
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(tmp_path / sub / f"{i}.png")
    return tmp_path


def test_folder_is_recursive_and_corrupt_files_are_counted(tmp_path):
    root = _folder(tmp_path)
    (root / "cls_a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "readme.txt").write_text("hello")
    images = load_training_images(root)
    assert len(images) == 5
    assert images.non_images == 1 and len(images.unreadable) == 1
    assert "skipped 2 files" in images.summary()


def test_empty_or_unreadable_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatinvError, match="no images"):
        load_training_images(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"garbage")
    with pytest.raises(FeatinvError, match="no readable images"):
        load_training_images(bad)
    with pytest.raises(FeatinvError, match="does not exist"):
        load_training_images(tmp_path / "missing")
    with pytest.raises(FeatinvError, match="PIL images"):
        load_training_images([1, 2])


def test_max_samples_takes_a_seeded_subset(tmp_path):
    root = _folder(tmp_path, n=8)
    a = load_training_images(root, max_samples=3, seed=1)
    b = load_training_images(root, max_samples=3, seed=1)
    assert len(a) == 3 and a.items == b.items
    photos = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    assert len(load_training_images(photos, max_samples=2)) == 2


def test_crop_and_target_are_the_same_crop_and_deterministic(tmp_path):
    gradient = np.zeros((60, 80, 3), dtype=np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 80, dtype=np.uint8)[None, :]
    gradient[..., 1] = np.linspace(0, 255, 60, dtype=np.uint8)[:, None]
    images = load_training_images([Image.fromarray(gradient)])
    data = AugmentedCrops(images, {"crop": 32, "target": 16})
    a, b = data[(0, 123)], data[(0, 123)]
    assert a["crop"].shape == (3, 32, 32) and a["target"].shape == (3, 16, 16) and a["crop"].dtype == torch.uint8
    assert torch.equal(a["crop"], b["crop"]) and torch.equal(a["target"], b["target"])
    down = torch.nn.functional.interpolate(a["crop"][None].float(), size=16, mode="area")[0]
    assert (down - a["target"].float()).abs().mean() < 4.0  # same crop, same flips, other size
    crops = [data[(0, s)]["crop"] for s in range(12)]
    assert len({c.float().sum().item() for c in crops}) > 6  # seeds give different crops / flips
    centre = AugmentedCrops(images, {"crop": 32}, augment=False)
    assert torch.equal(centre[(0, 1)]["crop"], centre[(0, 2)]["crop"])


def test_make_crops_gives_an_in_memory_set():
    crops = make_crops([Image.new("RGB", (50, 40), "red")], n=5, size=24, seed=0)
    assert len(crops) == 5 and all(c.size == (24, 24) for c in crops)


def test_shards_are_disjoint_and_resume_skips_exactly(tmp_path):
    schedule = Schedule(n=20, batch_size=2, world_size=2, grad_accum=2)
    assert schedule.steps_per_epoch == 2 and schedule.total_steps(3) == 6
    ranks = [list(ShardedBatches(schedule, seed=0, rank=r, total_steps=6)) for r in range(2)]
    assert len(ranks[0]) == 12  # 6 steps x 2 micro-batches
    for m in range(12):
        a = {i for i, _ in ranks[0][m]}
        b = {i for i, _ in ranks[1][m]}
        assert not a & b
    epoch0 = [i for r in range(2) for batch in ranks[r][:4] for i, _ in batch]
    assert len(set(epoch0)) == 16  # one epoch: 2 steps x 2 micro x 2 ranks x 2 samples, no repeats
    resumed = list(ShardedBatches(schedule, seed=0, rank=1, start_step=4, total_steps=6))
    assert resumed == ranks[1][8:]
    tiny = Schedule(n=3, batch_size=8)
    assert tiny.steps_per_epoch == 1 and len(next(iter(ShardedBatches(tiny, seed=0)))) == 8


def test_checkpoints_are_atomic_rotated_and_verified(tmp_path):
    root = tmp_path / "ckpt"
    param = torch.nn.Parameter(torch.arange(4.0))
    opt = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(4)
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(root, step, {"p": param.detach() * step}, {"note": "x"}, optimizer=opt.state_dict(), keep=2)
    (root / ".step-00000009.abc.tmp").mkdir()  # a writer killed mid-checkpoint
    assert [p.name for p in list_checkpoints(root)] == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(root).name == "step-00000003"
    ckpt = load_checkpoint(root)
    assert ckpt.step == 3 and ckpt.state["note"] == "x"
    assert torch.equal(ckpt.params["p"], param.detach() * 3)
    restored = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))], lr=0.1)
    restored.load_state_dict(ckpt.optimizer)
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    (ckpt.path / "trainer_state.pt").write_bytes(b"truncated")
    with pytest.raises(FeatinvError, match="corrupt"):
        load_checkpoint(ckpt.path)
    with pytest.raises(FeatinvError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")
