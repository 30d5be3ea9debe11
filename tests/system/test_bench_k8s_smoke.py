"""A seconds-long run of the agent benchmark (bench/k8s.py): it must run end to end
and measure every change.  Speed is not checked (the machine is shared)."""

from __future__ import annotations

import os
import sys

import pytest
from helpers import in_ci, require_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def test_bench_k8s_smoke() -> None:
    require_root()
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        if in_ci():
            pytest.fail("the kubernetes package is missing: install socklb[dev] (CI=true forbids skipping)")
        pytest.skip("the kubernetes package is not installed")
    from bench.k8s import measure, table

    r = measure(100, 5, rate=50, duration=1.0, min_sync_period=0.01, log=lambda *a: None)
    assert r["changes"] == 50
    assert r["latency_observed"] == 50, r
    lat = r["latency_s"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 30
    assert r["programmed"] == 100 and r["apply_errors"] == 0
    assert r["initial_sync_s"] > 0 and r["relist_s"] > 0 and r["rss_peak_mib"] > 0
    assert "100 x 5" in table([r])
