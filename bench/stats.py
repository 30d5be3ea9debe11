"""Merging the load generator's latency histograms and summarising rounds."""

from __future__ import annotations

import statistics
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = [
    "bucket_value_us",
    "merge_hist",
    "percentiles",
    "summarize",
    "median",
    "ratio",
    "paired_ratios",
    "sliced_ratio",
]

SUB_BITS = 8


def bucket_value_us(b: int, sub_bits: int = SUB_BITS) -> float:
    """Midpoint of histogram bucket ``b`` in microseconds (as in loadgen.c).

    >>> bucket_value_us(100)
    0.1
    >>> round(bucket_value_us(256 + 256 + 0), 4)  # [512, 514) ns
    0.513
    """
    sub = 1 << sub_bits
    if b < sub:
        return b / 1000.0
    shift = (b >> sub_bits) - 1
    lo = (sub + (b & (sub - 1))) << shift
    return (lo + (1 << shift) / 2.0) / 1000.0


def merge_hist(runs: Iterable[Mapping[str, Any]]) -> Dict[int, int]:
    out: Dict[int, int] = {}
    for r in runs:
        for b, n in r.get("hist", []):
            out[int(b)] = out.get(int(b), 0) + int(n)
    return out


def percentiles(hist: Mapping[int, int], qs: Sequence[float] = (0.5, 0.9, 0.99)) -> Dict[str, float]:
    """Percentiles (µs) of a merged histogram, the way loadgen computes them.

    >>> percentiles({256: 51, 512: 49})["p50"]
    0.257
    """
    total = sum(hist.values())
    out: Dict[str, float] = {}
    if total == 0:
        return {f"p{_qname(q)}": 0.0 for q in qs}
    items = sorted(hist.items())
    for q in qs:
        want = min(int(q * total), total - 1)
        acc = 0
        for b, n in items:
            acc += n
            if acc > want:
                out[f"p{_qname(q)}"] = round(bucket_value_us(b), 3)
                break
    return out


def _qname(q: float) -> str:
    text = f"{q * 100:g}"
    return text.replace(".", "")


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One mode, one workload, one scale: all rounds together."""
    requests = sum(int(r["requests"]) for r in runs)
    window = sum(float(r["window_s"]) for r in runs)
    hist = merge_hist(runs)
    errors: Dict[str, int] = {}
    for r in runs:
        for k, v in r.get("errors_by_kind", {}).items():
            errors[k] = errors.get(k, 0) + int(v)
    pct = percentiles(hist, (0.5, 0.9, 0.99, 0.999))
    return {
        "rounds": len(runs),
        "requests": requests,
        "rps": requests / window if window else 0.0,
        "rps_rounds": [round(float(r["rps"]), 1) for r in runs],
        "latency_us": pct,
        "p99_rounds": [float(r["latency_us"]["p99"]) for r in runs],
        "errors": sum(int(r["errors"]) for r in runs),
        "errors_by_kind": errors,
        "machine_busy": median([float(r["cpu"]["busy"]) for r in runs]),
        "softirq": median([float(r["cpu"]["softirq"]) for r in runs]),
        "server_cpu_us_per_req": median([float(r["cpu"]["server_us_per_req"]) for r in runs]),
        "client_cpu_us_per_req": median([float(r["cpu"]["client_us_per_req"]) for r in runs]),
        "foreign_cpu_share_max": max((float(r["cpu"].get("foreign_share", 0.0)) for r in runs), default=0.0),
        "steal_share_max": max((float(r["cpu"].get("steal_share", 0.0)) for r in runs), default=0.0),
        "per_cpu_busy": {
            cpu: median([float(r["cpu"]["per_cpu_busy"].get(cpu, 0.0)) for r in runs])
            for cpu in (runs[0]["cpu"].get("per_cpu_busy", {}) if runs else {})
        },
    }


def paired_ratios(mode_runs: List[Dict[str, Any]], base_runs: List[Dict[str, Any]], key: str) -> List[float]:
    """Per-round ratios mode/base of ``rps`` or ``p99`` (rounds paired in order)."""
    out = []
    for a, b in zip(mode_runs, base_runs):
        va = float(a["rps"]) if key == "rps" else float(a["latency_us"]["p99"])
        vb = float(b["rps"]) if key == "rps" else float(b["latency_us"]["p99"])
        if vb:
            out.append(va / vb)
    return out


def sliced_ratio(a: Sequence[float], b: Sequence[float]) -> Dict[str, Any]:
    """Throughput ratio of arm a to arm b from a time-sliced run: the requests
    (loadgen's "work") each arm completed in every cycle (one slice per arm per cycle, so the two
    lists are paired).  The estimate is the ratio of the sums; its 95%
    interval comes from the spread of the per-cycle residuals a - r b (the
    delta method for a ratio estimator over independent cycles).

    >>> r = sliced_ratio([100, 102, 98, 100], [100, 100, 100, 100])
    >>> r["ratio"], r["cycles"], r["ci95"][0] < 1.0 < r["ci95"][1]
    (1.0, 4, True)
    >>> sliced_ratio([], [])["ratio"] is None
    True
    """
    pairs = [(float(x), float(y)) for x, y in zip(a, b)]
    n = len(pairs)
    sa, sb = sum(x for x, _ in pairs), sum(y for _, y in pairs)
    if n < 2 or sb <= 0:
        return {"ratio": None, "ci95": None, "half_width": None, "cycles": n}
    r = sa / sb
    mb = sb / n
    res = [x - r * y for x, y in pairs]
    var = sum(d * d for d in res) / (n - 1) / (n * mb * mb)
    half = 1.96 * var**0.5
    return {
        "ratio": round(r, 5),
        "ci95": [round(r - half, 5), round(r + half, 5)],
        "half_width": round(half / r, 5) if r else None,
        "cycles": n,
    }
