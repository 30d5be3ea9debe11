"""Weights without a kernel: the alias table gives every backend exactly its share
(for listed and for random weights), weights without a distribution are refused,
and the encoding of a service (uniform lists cost nothing, weights make a table,
the largest service encodes)."""

from __future__ import annotations

import random
from collections import defaultdict
from fractions import Fraction
from typing import Dict, List, Sequence

import pytest
from helpers import VIP4

from socklb import Backend, Service
from socklb.control.encode import KEEP_ALL, alias_table, encode
from socklb.errors import InvalidValueError
from socklb.model import MAX_BACKENDS_PER_SERVICE, MAX_WEIGHT


def table_shares(weights: Sequence[int]) -> List[Fraction]:
    """What the alias table of ``weights`` gives each slot, exactly."""
    n, total = len(weights), sum(weights)
    share = [Fraction(0)] * n
    for i, (keep, alias) in enumerate(alias_table(weights)):
        assert 0 <= keep <= total and 0 <= alias < n
        share[i] += Fraction(keep, total * n)
        share[alias] += Fraction(total - keep, total * n)
    return share


@pytest.mark.parametrize(
    "weights",
    [[1], [3, 1], [1, 3], [1, 3, 6], [1, 99], [2, 2, 2], [0, 5, 0, 1], [7, 11, 13, 17, 19], [MAX_WEIGHT, 1, 2]],
)
def test_alias_table_is_exact(weights: List[int]) -> None:
    total = sum(weights)
    assert table_shares(weights) == [Fraction(w, total) for w in weights]


def test_alias_table_is_exact_for_random_weights(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        weights = [rng.randint(0, 50) for _ in range(rng.randint(1, 40))]
        weights[rng.randrange(len(weights))] += 1  # a positive sum
        total = sum(weights)
        assert table_shares(weights) == [Fraction(w, total) for w in weights], (weights, f"seed {seed}")


def test_alias_table_rejects_what_has_no_distribution() -> None:
    for bad in ([], [0, 0], [3, -1]):
        with pytest.raises(InvalidValueError, match="weights"):
            alias_table(bad)


def encoded_shares(svc: Service) -> Dict[int, float]:
    """What the datapath's draw (slot from the high half of r * n, keep from
    the low half) gives each backend id of the encoded service."""
    ids = [i + 1 for i in range(len(svc.backends))]  # the id of each backend, in order
    v = encode(svc, ids)
    n = v.n_usable
    share: Dict[int, float] = defaultdict(float)
    for m in v.members[:n]:
        p = 1.0 if m.alias_id == m.backend_id else m.keep / 2**32
        share[m.backend_id] += p / n
        share[m.alias_id] += (1 - p) / n
    return share


def test_encoding_uniform_costs_nothing_and_weights_make_a_table() -> None:
    same = Service(VIP4, 80, backends=[Backend(f"10.1.0.{i}", 80, weight=5) for i in range(1, 4)])
    v = encode(same, [i + 1 for i in range(len(same.backends))])
    assert v.algo == 0 and all(m.alias_id == m.backend_id and m.keep == KEEP_ALL for m in v.members)
    for algo in ("random", "weighted"):
        svc = Service(
            VIP4,
            80,
            backends=[Backend(f"10.1.0.{i}", 80, weight=w) for i, w in enumerate((1, 3, 6), 1)],
            algorithm=algo,
        )
        got = encoded_shares(svc)
        assert [round(got[i], 9) for i in (1, 2, 3)] == [0.1, 0.3, 0.6], (algo, got)


def test_the_largest_service_encodes() -> None:
    """65536 backends of the largest weight: the total fits the 32-bit field."""
    n = MAX_BACKENDS_PER_SERVICE
    bs = [Backend(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 80, weight=MAX_WEIGHT - (i == 0)) for i in range(n)]
    svc = Service("10.96.0.1", 80, backends=bs)
    v = encode(svc, [i + 1 for i in range(len(svc.backends))])
    assert v.total_weight == n * MAX_WEIGHT - 1 < 2**32 and v.algo == 1
    with pytest.raises(InvalidValueError, match="weight"):
        Backend("10.1.0.1", 80, weight=MAX_WEIGHT + 1)
