"""Maglev tables, computed without a kernel: deterministic, weighted, and a backend
change moves about 1/n of the flows."""

from __future__ import annotations

from collections import Counter

import pytest

from socklb import Backend
from socklb.balancer import maglev_table


@pytest.mark.parametrize("n", [5, 10, 40])
def test_maglev_disruption_is_about_one_in_n(n: int) -> None:
    size = 65537
    bs = [Backend(f"10.244.{i // 200}.{i % 200 + 1}", 8080) for i in range(n + 1)]
    before = maglev_table(bs[:n], size)
    # Removing one backend of n moves its own keys (about 1/n) and few others.
    after = maglev_table(bs[1:n], size)
    moved = sum(1 for a, b in zip(before, after) if bs[a] != bs[1:n][b])
    own = before.count(0)
    assert abs(own / size - 1 / n) < 0.01
    assert moved - own <= 0.02 * size, (moved, own)
    # Adding one backend to n moves about 1/(n+1) of keys.
    grown = maglev_table(bs, size)
    moved = sum(1 for a, b in zip(before, grown) if a != b)
    assert moved / size <= 1 / (n + 1) + 0.02, moved / size
    assert moved / size >= 1 / (n + 1) - 0.01
    # The table is balanced: every backend within 1% of its share.
    shares = Counter(grown)
    assert max(shares.values()) - min(shares.values()) <= size * 0.01


def test_maglev_tables_are_deterministic_and_weighted() -> None:
    bs = [Backend("10.0.0.1", 80, weight=1), Backend("10.0.0.2", 80, weight=3)]
    assert maglev_table(bs, 4099) == maglev_table(list(bs), 4099)
    c = Counter(maglev_table(bs, 4099))
    assert abs(c[1] / 4099 - 0.75) < 0.01
