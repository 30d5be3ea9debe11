"""The one statistical check of the test suite: are these counts drawn in
proportion to these weights?

Every assertion on a random outcome (a split of connections or sockets over
backends) goes through :func:`split_ok` or :func:`assert_split`, so that the
whole suite has one false-failure budget:

* ``SUITE_FALSE_FAILURE`` (1e-6) is the probability that a correct
  implementation fails *any* statistical assertion of one full run.
* ``STATISTICAL_ASSERTS`` bounds the number of such assertions in the suite
  (9 today: tests/datapath/test_weights.py has 6 and test_selection.py 3; the
  one asserting a rejection, ``not split_ok(...)``, counts too). Adding one
  means raising it.
* Each assertion gets ``ALPHA = SUITE_FALSE_FAILURE / STATISTICAL_ASSERTS``
  (Bonferroni: the union bound holds whatever the dependence between tests).

The test is exact, no large-sample approximation: each backend's count is
checked with an exact two-sided binomial test (``scipy.stats.binomtest``)
against its share ``weight / sum(weights)``, and the split fails when any
backend's p-value is below ``ALPHA / k`` (Bonferroni again, over the ``k``
backends).  Small expected counts (10 of 1,000 for 1:99) are therefore judged
correctly, where a chi-square test's p-value is not to be trusted.

Power: the sample sizes of the tests make a clearly wrong split fail; the
probability that it passes, computed exactly from the binomial distribution
(per backend, an upper bound for the whole split):

==========================  =====  ====================  ==================
test                        n      claim / truth         wrong passes with
==========================  =====  ====================  ==================
default algorithm 3:1       600    3:1 / 1:1             < 1e-13
default algorithm 1:3:6     800    1:3:6 / 1:1:1         < 1e-15
default algorithm 1:99      1000   1:99 / 1:1            < 1e-15
(5:95 for 1:99, 1000: 50 expected, 31 the most accepted)
UDP sockets, fallback 3:1   400    3:1 / 1:1             2e-7
random uniform              900    1:1:1 / 2:1:1         1.3e-6
weighted 1:3:6              1000   1:3:6 / 1:1:1         < 1e-15
maglev 1:1:2                800    1:1:2 / 1:1:1         2.6e-5
the check rejects           600    3:1 / 1:1             < 1e-13
==========================  =====  ====================  ==================

tests/unit/test_stats_check.py shows both sides on fixed data.
"""

from __future__ import annotations

from typing import Sequence

from scipy.stats import binomtest  # type: ignore[import-untyped]  # scipy ships no stubs

__all__ = ["ALPHA", "STATISTICAL_ASSERTS", "SUITE_FALSE_FAILURE", "assert_split", "split_ok", "split_p_value"]

SUITE_FALSE_FAILURE = 1e-6
STATISTICAL_ASSERTS = 10
ALPHA = SUITE_FALSE_FAILURE / STATISTICAL_ASSERTS


def split_p_value(counts: Sequence[int], weights: Sequence[float]) -> float:
    """The p-value of "counts are drawn in proportion to weights": the
    smallest exact binomial p-value over the backends, times their number
    (Bonferroni), at most 1.  A backend of weight 0 that was chosen, or one
    of every weight that was not always chosen, gives 0."""
    if len(counts) != len(weights) or not counts:
        raise ValueError(f"{len(counts)} counts for {len(weights)} weights")
    if any(c < 0 for c in counts) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"counts {list(counts)} and weights {list(weights)} must be non-negative, some weight > 0")
    n, total = sum(counts), float(sum(weights))
    if n == 0:
        raise ValueError("no observations")
    smallest = 1.0
    for c, w in zip(counts, weights):
        p = w / total
        if p == 0.0 or p == 1.0:
            smallest = min(smallest, 1.0 if c == n * p else 0.0)
            continue
        smallest = min(smallest, float(binomtest(int(c), int(n), p).pvalue))
    return min(1.0, smallest * len(counts))


def split_ok(counts: Sequence[int], weights: Sequence[float], alpha: float = ALPHA) -> bool:
    """Are these counts drawn in proportion to these weights?  False with
    probability at most ``alpha`` when they are."""
    return split_p_value(counts, weights) > alpha


def assert_split(counts: Sequence[int], weights: Sequence[float], context: object = "") -> None:
    """:func:`split_ok`, as an assertion whose message shows the numbers."""
    p = split_p_value(counts, weights)
    n, total = sum(counts), sum(weights)
    expected = [round(n * w / total, 1) for w in weights]
    assert p > ALPHA, f"counts {list(counts)}, expected {expected}: p = {p:.3g} <= {ALPHA:.0e} {context}"
