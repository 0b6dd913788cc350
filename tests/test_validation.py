"""Shared input checks: every bound refused with one FeatinvError line naming the fix."""

from __future__ import annotations

import pytest

from featinv.errors import FeatinvError
from featinv.validation import check_count, check_number, check_seeds, check_steps


@pytest.mark.parametrize("seeds, message", [(2**64, "out of range"), (-1, "out of range"), (1.5, "not an integer"),
                                            ([], "no seeds")])
def test_seed_bounds(seeds, message):
    with pytest.raises(FeatinvError, match=message):
        check_seeds(seeds)
    assert check_seeds([0, 2**64 - 1]) == [0, 2**64 - 1]


@pytest.mark.parametrize("steps", [0, 1001, 2.5, True, "50"])
def test_step_bounds(steps):
    with pytest.raises(FeatinvError, match="from 1 to 1000"):
        check_steps(steps)
    assert check_steps(1000) == 1000


def test_counts_and_numbers_refuse_infinity_and_out_of_range():
    with pytest.raises(FeatinvError, match="finite number"):
        check_number(float("inf"), "epochs")
    with pytest.raises(FeatinvError, match="finite number"):
        check_number("nan", "epochs")
    with pytest.raises(FeatinvError, match="not a number"):
        check_number("many", "epochs")
    with pytest.raises(FeatinvError, match="from 16 to 4096"):
        check_count(100000, "input size", low=16, high=4096)
    assert check_number(3, "epochs") == 3.0 and check_count(224, "input size", low=16, high=4096) == 224
