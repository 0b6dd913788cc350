"""BatchDraws: the rows of a micro-batch split over processes get the draws one process would give them."""

from __future__ import annotations

import pytest
import torch

from featinv.diffusion.draws import BatchDraws


def _draws(offset: int, rows: int, total: int | None) -> list[torch.Tensor]:
    draws = BatchDraws(torch.Generator().manual_seed(7), offset=offset, total=total)
    return [draws.rand(rows), draws.randn((rows, 2, 3)), draws.randint(1000, rows), draws.randn((rows, 4), torch.float16)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_put_together_are_the_whole_batch(world_size):
    rows = 2
    whole = _draws(0, rows * world_size, None)
    shards = [_draws(rank * rows, rows, rows * world_size) for rank in range(world_size)]
    for kind, expected in enumerate(whole):
        assert torch.equal(torch.cat([shard[kind] for shard in shards]), expected)


def test_one_process_draws_are_the_generators_own():
    generator = torch.Generator().manual_seed(7)
    plain = [torch.rand(4, generator=generator), torch.randn((4, 2, 3), generator=generator),
             torch.randint(0, 1000, (4,), generator=generator), torch.randn((4, 4), generator=generator,
                                                                            dtype=torch.float16)]
    for got, expected in zip(_draws(0, 4, None), plain, strict=True):
        assert torch.equal(got, expected)
    assert BatchDraws.of(generator).generator is generator


def test_rows_outside_the_batch_are_refused():
    with pytest.raises(ValueError, match="outside a micro-batch of 4"):
        BatchDraws(torch.Generator(), offset=3, total=4).rand(2)
