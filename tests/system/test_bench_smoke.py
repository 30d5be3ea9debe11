"""A seconds-long run of the benchmark harness (bench/): every mode and
workload must work and the outputs must be written.  Speed is not checked."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import sys
from typing import Any

import pytest
from helpers import require_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.mark.slow
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
        sliced_duration=1.0,
        out_dir=out,
    )
    lines: list[str] = []
    res = run(cfg, log=lines.append)

    for scale in ("1", "10"):
        for proto in ("tcp", "udp"):
            per = res["scales"][scale][proto]
            assert set(per) == {"socklb", "iptables", "nftables", "direct", "detached"}
            for mode, s in per.items():
                assert s["requests"] > 0, (scale, proto, mode)
                assert s["errors"] == 0, (scale, proto, mode, s["errors_by_kind"])
                assert s["latency_us"]["p50"] > 0
                assert s["latency_us"]["p50"] <= s["latency_us"]["p99"]
                assert 0.0 <= s["steal_share_max"] <= 1.0
            assert per["socklb"]["vs_direct"]["rps_ratio"] > 0
            # detached: the socklb lab with the balancer detached, pods dialled directly
            assert per["socklb"]["vs_detached"]["rps_ratio"] > 0
            assert per["detached"]["requests"] > 0
        hook = res["hook_cost"][scale]["avg_ns"]
        for prog in ("socklb_connect4", "socklb_sendmsg4", "socklb_recvmsg4", "floor_connect4", "floor_sendmsg4"):
            assert hook[prog] is not None and hook[prog] > 0, (scale, prog, hook)
        # The time-sliced A/B: every arm ran and every pair has a ratio and its interval.
        for proto in ("tcp", "udp"):
            sliced = res["sliced"][scale][proto]
            assert set(sliced["arms"]) == {"socklb", "direct", "direct-aa", "iptables", "nftables"}
            for arm, a in sliced["arms"].items():
                assert a["requests"] > 0 and a["errors"] == 0, (scale, proto, arm, a["errors_by_kind"])
            assert set(sliced["vs"]) == {"socklb/direct", "direct-aa/direct", "socklb/iptables", "socklb/nftables"}
            for pair, v in sliced["vs"].items():
                lo, hi = v["ci95"]
                assert lo <= v["ratio"] <= hi and v["cycles"] > 10 and v["p99_ratio"] > 0, (scale, proto, pair, v)
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

    # The terminal summary: hook cost per hook and scale, ratios against the targets.
    text = "\n".join(lines)
    assert "hook cost, ns per run" in text and "connect4" in text and "socklb/direct" in text
    assert any(t["target"].startswith("socklb_connect4 <= 250 ns") for t in res["targets"])

    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["scales"].keys() == {"1", "10"}
    with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
        md = f.read()
    assert "## TCP connect/request/response/close" in md and "## Targets" in md
    assert "## Time-sliced A/B" in md
    assert any(t["target"].startswith("TCP CRR socklb >= 0.97x direct (1 svc, sliced)") for t in res["targets"])
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("throughput.png", "p99.png", "hook_cost.png", "ratios.png"):
            with open(os.path.join(out, png), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_hook_cost_smoke() -> None:
    """bench.hook_cost times every translating hook (a few calls: speed is not checked)."""
    require_root()
    from bench.hook_cost import measure

    res = measure(50, 1, 3)
    assert set(res) == {
        "tcp:connect4",
        "tcp:connect6",
        "udp:sendmsg4",
        "udp:recvmsg4",
        "udp:sendmsg6",
        "udp:recvmsg6",
        "udpc:connect4",
        # the empty programs on the same cgroup: the measurement floor
        "floor:connect4",
        "floor:sendmsg4",
    }
    assert all(len(v) == 1 and v[0] > 0 for v in res.values()), res
    # An empty program costs less than one that translates (a generous bound:
    # 50 calls, other work on the machine).
    assert res["floor:connect4"][0] < res["tcp:connect4"][0] * 2, res


def test_the_floor_is_the_bench_own() -> None:
    """The empty floor programs come from bench/floor.c (bench.build), not
    from socklb's extension, which ships only what the library uses."""
    from bench.hook_cost import floor_library

    from socklb._native import lib

    assert not hasattr(lib, "socklb_floor_attach") and not hasattr(lib, "socklb_fd_prog_stats")
    floor = floor_library()
    assert floor.floor_attach(7, -1, None) == -errno.EINVAL  # no such hook


def test_loadgen_slices_share_the_client(tmp_path: Any) -> None:
    """Two load generators with the same --slices take turns: each runs in
    its own slice of every cycle, they split the time, and each cycle's
    requests are reported; a bad --slices is refused."""
    require_root()
    import subprocess
    import time

    from bench.build import build

    from socklb.testing.lab import Lab

    bins = build()
    bad = subprocess.run(
        [bins["loadgen"], "--proto", "tcp", "--target", "10.0.0.1:1", "--slices", "1:2:3"], check=False
    )
    assert bad.returncode == 2
    with Lab() as lab:
        client, server = lab.add_pod("client"), lab.add_pod("server")
        srv = server.popen([bins["server"], "--tcp", "8080", "--udp", "5353"], stdout=subprocess.PIPE, text=True)
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        start = time.monotonic_ns() + 300_000_000
        procs = []
        for arm, place in enumerate((client, client.sibling("other"))):
            argv = [bins["loadgen"], "--proto", "tcp", "--target", f"{server.ipv4}:8080", "--duration", "1"]
            argv += ["--warmup", "0.2", "--slices", f"{start}:5000000:2:{arm}:7", "--blocks", "2"]
            procs.append(place.popen(argv, stdout=subprocess.PIPE, text=True))
        outs = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    for o in outs:
        sl = o["slices"]
        assert sl["arms"] == 2 and sl["slice_ns"] == 5_000_000
        measured = sl["counts"][sl["warmup_cycles"] : sl["full_cycles"]]
        assert len(measured) >= 100 and sum(1 for n in measured if n > 0) >= 0.9 * len(measured), measured
        assert sum(measured) <= o["requests"] and o["errors"] == 0
        # Work: whole requests plus parts of those that outran their slice.
        work = sl["work"][sl["warmup_cycles"] : sl["full_cycles"]]
        assert all(n <= w < n + 2 for n, w in zip(measured, work)), (measured, work)
        assert len(sl["blocks"]) == 2 and all(b["requests"] > 0 for b in sl["blocks"])
        # Half of the window each: one slice per cycle.
        assert 0.4 <= o["window_s"] <= 0.6, o["window_s"]
    assert 0.5 < outs[0]["requests"] / outs[1]["requests"] < 2.0
