"""The suite's one statistical check (tests/stats_check.py): it accepts a
correct split, including small expected counts, and rejects a clearly wrong
one at the sample sizes the datapath tests use."""

from __future__ import annotations

import pytest
from stats_check import ALPHA, STATISTICAL_ASSERTS, SUITE_FALSE_FAILURE, assert_split, split_ok, split_p_value


def test_the_budget_is_shared_by_the_whole_suite() -> None:
    assert ALPHA * STATISTICAL_ASSERTS == pytest.approx(SUITE_FALSE_FAILURE)
    assert ALPHA <= 1e-7


def test_it_rejects_an_even_split_claimed_as_3_to_1() -> None:
    # 600 connections split 1:1 (the weights ignored), checked against 3:1.
    assert not split_ok([300, 300], [3, 1])
    assert split_p_value([300, 300], [3, 1]) < 1e-12
    with pytest.raises(AssertionError, match="expected"):
        assert_split([300, 300], [3, 1])


def test_it_accepts_a_3_to_1_split() -> None:
    assert split_ok([450, 150], [3, 1])
    assert split_ok([425, 175], [3, 1])  # 2.4 standard deviations off: still fine
    assert_split([450, 150], [3, 1])


def test_small_expected_counts_are_judged_exactly() -> None:
    # The case a chi-square test got wrong: 21 of 1,000 where 10 are expected
    # for 1:99 (p about 2e-3 exactly) is a correct split's plausible outcome...
    assert split_ok([21, 979], [1, 99])
    # ... while half of the connections on the 1% backend is not.
    assert not split_ok([500, 500], [1, 99])
    assert not split_ok([60, 940], [1, 99])


def test_three_backends_and_zero_weights() -> None:
    assert split_ok([100, 300, 600], [1, 3, 6])
    assert not split_ok([333, 333, 334], [1, 3, 6])
    assert split_ok([0, 150, 450], [0, 1, 3])
    assert not split_ok([1, 150, 449], [0, 1, 3])  # a drained backend chosen once


def test_bad_input_is_refused() -> None:
    for counts, weights in (([1, 2], [1]), ([], []), ([-1, 2], [1, 1]), ([1, 2], [0, 0]), ([0, 0], [1, 1])):
        with pytest.raises(ValueError):
            split_p_value(counts, weights)
