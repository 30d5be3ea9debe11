"""A seconds-long run of the benchmark harness (bench/): every mode and
workload must work and the outputs must be written.  Speed is not checked."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

from helpers import require_root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def test_bench_smoke(tmp_path: Any) -> None:
    require_root()
    from bench.runner import Config, run

    out = str(tmp_path / "results")
    cfg = Config(
        scales=[1, 10],
        rounds=1,
        duration=0.5,
        warmup=0.1,
        concurrency=1,
        control_scales=[10],
        changes=2,
        hook_duration=0.3,
        quiet_wait=0,
        out_dir=out,
    )
    lines: list[str] = []
    res = run(cfg, log=lines.append)

    for scale in ("1", "10"):
        for proto in ("tcp", "udp"):
            per = res["scales"][scale][proto]
            assert set(per) == {"socklb", "iptables", "nftables", "direct"}
            for mode, s in per.items():
                assert s["requests"] > 0, (scale, proto, mode)
                assert s["errors"] == 0, (scale, proto, mode, s["errors_by_kind"])
                assert s["latency_us"]["p50"] > 0
                assert s["latency_us"]["p50"] <= s["latency_us"]["p99"]
            assert per["socklb"]["vs_direct"]["rps_ratio"] > 0
        hook = res["hook_cost"][scale]["avg_ns"]
        for prog in ("socklb_connect4", "socklb_sendmsg4", "socklb_recvmsg4"):
            assert hook[prog] is not None and hook[prog] > 0, (scale, prog, hook)
        assert res["control_plane"]["iptables"][scale]["partial_sync_one_change_s"]["median"] > 0
        assert res["control_plane"]["nftables"][scale]["one_change_s"]["median"] > 0
    cp = res["control_plane"]["socklb"]["10"]
    assert "error" not in cp, cp
    assert cp["sync_from_empty_s"] > 0 and cp["sync_map_writes"] > 0
    assert cp["upsert_one_change_s"]["median"] > 0
    assert res["control_plane"]["iptables"]["10"]["restore_from_empty_x10_s"] > 0
    assert res["control_plane"]["nftables"]["10"]["load_from_empty_x10_s"] > 0
    assert res["machine"]["kernel"] and res["machine"]["cores"] >= 1
    assert res["machine"]["ipvs"]

    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["scales"].keys() == {"1", "10"}
    with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
        md = f.read()
    assert "## TCP connect/request/response/close" in md and "## Targets" in md
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("throughput.png", "p99.png"):
            with open(os.path.join(out, png), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
