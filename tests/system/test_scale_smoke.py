"""A short run of bench.scale (issue 14, part 4): many services programmed into maps
sized from the limits, probed services spread over the whole table balanced by real
connects, and connect4's cost read from the kernel's BPF statistics.  The full run
(up to 200,000 services x 10) is ``python -m bench.scale``; speed is not checked here."""

from __future__ import annotations

import os
import sys

import pytest
from helpers import require_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.mark.slow
def test_scale_smoke() -> None:
    require_root()
    from bench.scale import ascii_plot, measure, probe_indexes, svg, table, vip

    assert probe_indexes(20000, 5) == [0, 5000, 10000, 14999, 19999]
    assert vip(0) == "10.96.0.1" and vip(200000) == "10.99.13.65"
    lines: list[str] = []
    r = measure(10000, backends=10, connects=300, rounds=1, probe_services=8, probes=25, log=lines.append)
    assert r["map_writes"] == 10000 * (1 + 10 + 10)  # a service entry, 10 backends, 10 slots each
    assert r["map_entries"]["services"] == 2 * 10000 and r["map_entries"]["backends"] == 2 * 100000
    # Hash maps are preallocated from the limits: the kernel memory grows with them.
    assert r["kernel_bytes_per_service"] > 500 and r["map_memory"]["backends"] > 100000 * 24
    assert r["probed_services"] == 8 and r["ports_reached"] == 10  # the last service balances too
    assert r["connect4_ns"]["service"]["median"] > 0 and r["connect4_ns"]["direct"]["median"] > 0
    assert "10,000 x 10" in table([r]) and "<svg" in svg([r, r]) and "ns" in ascii_plot([r])
    assert any("connect4" in line for line in lines)
