"""How the benchmark harness (bench/) judges its runs, without running any: noisy
runs are reported unusable, CPU accounting reads steal time, sliced runs are
judged by their A/A pair."""

from __future__ import annotations

from typing import Any


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
    assert judged["TCP CRR socklb >= 0.97x direct (1 svc, rounds)"]["met"] is False
    noisy = judged["TCP CRR socklb >= 0.97x direct (1,000 svc, rounds)"]
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


def test_sliced_runs_are_judged_by_their_aa_pair() -> None:
    """The targets read the sliced A/B when a scale has one; it is judged only
    when its A/A pair (two identical direct arms) reads 1 within 1% and the
    socklb/direct interval is narrow enough."""
    from bench import report
    from bench.stats import sliced_ratio

    def pair(ratio: float, half: float, p99: float = 1.0) -> dict[str, Any]:
        return {"ratio": ratio, "ci95": [ratio - half, ratio + half], "half_width": half / ratio, "p99_ratio": p99}

    def scale(aa: float, socklb: float, half: float, aa_p99: float = 1.0) -> dict[str, Any]:
        vs = {"direct-aa/direct": pair(aa, 0.004, aa_p99), "socklb/direct": pair(socklb, half, 1.02)}
        vs["socklb/iptables"] = pair(1.3, 0.01)
        return {w: {"vs": vs, "arms": {"socklb": {"errors": 0}}} for w in ("tcp", "udp")}

    res: dict[str, Any] = {
        "scales": {},
        "sliced": {
            "1": scale(1.002, 0.985, 0.004),
            "1000": scale(1.03, 0.985, 0.004),
            "10000": scale(1.0, 0.96, 0.03),
            "50000": scale(1.0, 0.95, 0.004, aa_p99=1.2),
        },
    }
    judged = {t["target"]: t for t in report.targets(res)}
    assert judged["TCP CRR socklb >= 0.97x direct (1 svc, sliced)"]["met"] is True
    assert judged["TCP CRR socklb p99 <= 1.05x direct (1 svc, sliced)"]["met"] is True
    assert judged["TCP CRR socklb >= 1.15x iptables (1 svc, sliced)"]["met"] is True
    aa_off = judged["TCP CRR socklb >= 0.97x direct (1,000 svc, sliced)"]
    assert aa_off["met"] is None and "A/A pair read 1.030" in aa_off["why_not_judged"]
    wide = judged["UDP RR socklb >= 0.97x direct (10,000 svc, sliced)"]
    assert wide["met"] is None and "interval" in wide["why_not_judged"]
    assert judged["TCP CRR socklb >= 0.97x direct (50,000 svc, sliced)"]["met"] is False
    assert judged["TCP CRR socklb p99 <= 1.05x direct (50,000 svc, sliced)"]["met"] is None
    md = report.markdown(res)
    assert "| 1 | tcp |" in md and "0.985 (0.981-0.989)" in md

    # The interval: identical arms read 1 and it holds 1; a 10% gap is resolved.
    same = sliced_ratio([100, 96, 104, 100] * 50, [100, 100, 100, 100] * 50)
    assert same["ratio"] == 1.0 and same["ci95"][0] < 1.0 < same["ci95"][1]
    gap = sliced_ratio([90, 92, 88, 90] * 50, [100, 101, 99, 100] * 50)
    assert gap["ci95"][1] < 0.92 and gap["cycles"] == 200
