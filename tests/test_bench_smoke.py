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
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("throughput.png", "p99.png", "hook_cost.png", "ratios.png"):
            with open(os.path.join(out, png), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_noisy_runs_are_reported_unusable() -> None:
    """A scale whose direct baseline (or per-round ratio) varies more than
    MAX_SPREAD over the rounds is not judged against the targets."""
    from bench import report

    def scale(direct: list[float], ratios: list[float]) -> dict[str, Any]:
        med = sorted(ratios)[len(ratios) // 2]
        sl = {"vs_direct": {"rps_ratio_rounds": ratios, "rps_ratio_rounds_median": med, "rps_ratio": med}}
        return {"tcp": {"socklb": sl, "direct": {"raw": [{"rps": x} for x in direct]}}}

    steady = scale([20000, 20400, 19800], [0.95, 0.96, 0.955])
    shaky_base = scale([20000, 12000, 19800], [0.95, 0.96, 0.955])
    shaky_ratio = scale([20000, 20400, 19800], [0.80, 0.99, 0.95])
    res = {"scales": {"1": steady, "1000": shaky_base, "10000": shaky_ratio}}
    assert report.usable(res, "1", "tcp") == (True, "")
    ok, why = report.usable(res, "1000", "tcp")
    assert not ok and "direct baseline" in why
    ok, why = report.usable(res, "10000", "tcp")
    assert not ok and "ratio" in why
    judged = {t["target"]: t for t in report.targets(res)}
    assert judged["TCP CRR socklb >= 0.97x direct (1 svc)"]["met"] is False
    noisy = judged["TCP CRR socklb >= 0.97x direct (1,000 svc)"]
    assert noisy["met"] is None and "direct baseline" in noisy["why_not_judged"]
    assert "UNUSABLE" in report.summary(res)

    # The hypervisor's steal is named as the likely cause once it is noticeable.
    shaky_base["tcp"]["direct"]["steal_share_max"] = 0.31
    ok, why = report.usable(res, "1000", "tcp")
    assert not ok and "hypervisor stole up to 31%" in why
    shaky_base["tcp"]["direct"]["steal_share_max"] = 0.01
    assert "hypervisor" not in report.usable(res, "1000", "tcp")[1]


def test_cpu_accounting_reads_steal() -> None:
    """busy_fraction splits the hypervisor's steal out of /proc/stat's samples."""
    from bench.system import CpuSample, busy_fraction, cpu_sample

    a = CpuSample({"cpu": (1000, 400, 10, 0), "cpu0": (500, 200, 5, 0)})
    b = CpuSample({"cpu": (2000, 600, 30, 300), "cpu0": (1000, 300, 15, 150)})
    got = busy_fraction(a, b)
    assert got["steal"] == 0.3 and got["busy"] == 0.8 and got["softirq"] == 0.02
    assert got["per_cpu_busy"] == {"cpu0": 0.8}
    live = cpu_sample().lines["cpu"]
    assert len(live) == 4 and live[0] >= live[1] + live[3]


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
