"""Scale beyond: up to 200,000 services x 10 backends (2,000,000 backends), and the datapath cost against it.

Run as root from the repository root::

    .venv/bin/python -m bench.scale                                   # 1, 1k, 10k, 50k, 200k services
    .venv/bin/python -m bench.scale --scales 1,1000 -n 2000           # a short look

For each scale N, in a fresh lab (one client pod, one pod serving TCP on 10 ports)
and a fresh :class:`socklb.Balancer` whose maps are sized from the limits
(``max_services=N``, ``max_backends=10 N``; the maps hold ``HEADROOM`` times that):

1. N services x ``--backends`` backends are built and programmed with one
   ``sync()`` (timed; the process's RSS before and after);
2. the kernel memory of every map (``Balancer.map_memory()``), in total and per
   service;
3. **balance**: from the client pod, ``--probe-services`` services spread over the
   whole table (the first, the last and evenly between) are dialled ``--probes``
   times each; their backends are the serving pod's 10 ports, and every connect
   must reach the pod and between them reach every port;
4. **the datapath cost**: with kernel BPF statistics on, ``-n`` TCP connects to a
   service (the translating path) and ``-n`` to the pod directly (a connect that is
   no service's), ``--rounds`` times; connect4's average run time per call.

The other services' backends are addresses in 10.128.0.0/9 that nothing dials.
Prints a table, writes ``--out`` (JSON, default ``bench/results/scale.json``) and
an SVG plot of connect4's cost against N (``bench/results/scale.svg``).  Issue 14's
target: the cost is flat from 1 to 200,000 services.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from bench.system import bpf_stats, rss_kib
from socklb import Backend, Balancer, Service
from socklb.testing.lab import Lab

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
SCALES = [1, 1000, 10000, 50000, 200000]
PORTS = 8080
_VIP0 = int(ipaddress.IPv4Address("10.96.0.1"))  # 10.96.0.0/12: room for 1,048,574 services
_POD0 = int(ipaddress.IPv4Address("10.128.0.1"))  # 10.128.0.0/9: backends nothing dials
MAX_SERVICES = (1 << 20) - 2

CONNECTS = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect((host, port))
    s.close()
"""

PROBE = r"""
import json, socket, sys
targets, n = json.loads(sys.argv[1]), int(sys.argv[2])
out = {}
for host in targets:
    seen = {}
    for _ in range(n):
        s = socket.create_connection((host, 80), timeout=5)
        s.sendall(b"x\n")
        name = s.makefile().readline().strip()  # the server on port P answers pP
        s.close()
        seen[name] = seen.get(name, 0) + 1
    out[host] = seen
print(json.dumps(out))
"""


def vip(i: int) -> str:
    """The i-th service address (0-based) in 10.96.0.0/12."""
    if not 0 <= i < MAX_SERVICES:
        raise ValueError(f"service index {i} does not fit 10.96.0.0/12")
    return str(ipaddress.IPv4Address(_VIP0 + i))


def probe_indexes(n: int, count: int) -> List[int]:
    """``count`` service indexes spread over 0..n-1: the first, the last and evenly between."""
    if n <= count:
        return list(range(n))
    return sorted({round(k * (n - 1) / (count - 1)) for k in range(count)})


def make_services(n: int, backends: int, pod: str, probed: Sequence[int]) -> List[Service]:
    """N services; those in ``probed`` have the serving pod's ports as backends."""
    live = [Backend(pod, PORTS + j) for j in range(backends)]
    wanted = set(probed)
    out = []
    for i in range(n):
        if i in wanted:
            bs = live
        else:
            base = _POD0 + i * backends
            bs = [Backend(str(ipaddress.IPv4Address(base + j)), PORTS) for j in range(backends)]
        out.append(Service(vip(i), 80, "tcp", bs))
    return out


def _connect4(lb: Balancer) -> tuple[int, int]:
    st = next(s for s in lb.program_stats() if s.name == "socklb_connect4")
    return st.run_cnt, st.run_time_ns


def measure(
    n: int,
    backends: int = 10,
    connects: int = 20000,
    rounds: int = 3,
    probe_services: int = 16,
    probes: int = 40,
    log: Any = print,
) -> Dict[str, Any]:
    """One scale: see the module docstring.  Raises RuntimeError if a probe fails."""
    out: Dict[str, Any] = {"services": n, "backends_per_service": backends}
    with Lab() as lab:
        client, web = lab.add_pod("client"), lab.add_pod("web")
        for j in range(backends):  # one server a port, named after it
            web.serve(f"p{PORTS + j}", tcp=[PORTS + j])
        probed = probe_indexes(n, probe_services)
        gc.collect()
        rss0 = rss_kib()
        t0 = time.perf_counter()
        services = make_services(n, backends, web.ipv4, probed)
        out["build_s"] = time.perf_counter() - t0
        with Balancer(max_services=n, max_backends=n * backends) as lb:
            out["map_entries"] = lb.spec.map_entries()
            empty = lb.map_memory()
            rss1 = rss_kib()
            c0, t0 = time.process_time(), time.perf_counter()
            res = lb.sync(services)
            out["sync_s"], out["sync_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
            out["map_writes"] = res.map_writes
            gc.collect()
            out["rss_mib"] = {"values": (rss1 - rss0) / 1024, "after_sync": rss_kib() / 1024}
            mem = lb.map_memory()
            total = sum(mem.values())
            out["map_memory"] = mem
            out["kernel_bytes"] = total
            out["kernel_bytes_per_service"] = total / n
            out["kernel_bytes_per_service_filled"] = (total - sum(empty.values())) / n
            usage = lb.map_usage()
            if usage["services"][0] != n or usage["backends"][0] != n * backends:
                raise RuntimeError(f"{n} services: the maps hold {usage['services']} services, {usage['backends']}")
            log(
                f"  {n:,} x {backends}: sync {out['sync_s']:.2f} s (cpu {out['sync_cpu_s']:.2f} s), "
                f"kernel {total / 2**20:.1f} MiB ({total / n:,.0f} B/service), "
                f"RSS {out['rss_mib']['after_sync']:.0f} MiB"
            )
            lb.attach(client.cgroup)

            # Balance: the probed services spread over the table reach every port of the pod.
            hosts = [vip(i) for i in probed]
            got = json.loads(client.python(PROBE, json.dumps(hosts), str(probes), timeout=300))
            names = {f"p{PORTS + j}" for j in range(backends)}
            wrong = {h: seen for h, seen in got.items() if set(seen) - names or sum(seen.values()) != probes}
            if wrong or len(got) != len(hosts):
                raise RuntimeError(f"connects reached servers that are no backend: {wrong}")
            ports_hit = sorted({int(p[1:]) for seen in got.values() for p in seen})
            out["probed_services"] = len(hosts)
            out["probe_connects"] = len(hosts) * probes
            out["ports_reached"] = len(ports_hit)
            if len(ports_hit) < min(backends, probes * len(hosts)) and probes * len(hosts) >= 20 * backends:
                raise RuntimeError(f"{len(hosts) * probes} connects reached only ports {ports_hit}")

            # The datapath's cost: translated connects (to the last service) and untranslated ones.
            cost: Dict[str, List[float]] = {"service": [], "direct": []}
            targets = {"service": (vip(probed[-1]), 80), "direct": (web.ipv4, PORTS)}
            for _ in range(rounds):
                for what, (host, port) in targets.items():
                    with bpf_stats():
                        r0, ns0 = _connect4(lb)
                        client.python(CONNECTS, host, str(port), str(connects), timeout=600)
                        r1, ns1 = _connect4(lb)
                    if r1 - r0 < connects:
                        raise RuntimeError(f"connect4 ran {r1 - r0} times for {connects} connects")
                    cost[what].append((ns1 - ns0) / (r1 - r0))
            out["connect4_ns"] = {
                k: {"median": statistics.median(v), "rounds": [round(x, 1) for x in v]} for k, v in cost.items()
            }
            log(
                f"  connect4: {out['connect4_ns']['service']['median']:.0f} ns to a service, "
                f"{out['connect4_ns']['direct']['median']:.0f} ns to no service; "
                f"{len(hosts) * probes} probe connects over {len(hosts)} services reached {len(ports_hit)} ports"
            )
        del services
        gc.collect()
    return out


def flatness(results: Sequence[Dict[str, Any]], what: str = "service") -> float:
    """The largest connect4 cost over the smallest, across scales (1.0: flat)."""
    vals = [r["connect4_ns"][what]["median"] for r in results]
    return max(vals) / min(vals) if vals and min(vals) > 0 else float("nan")


def table(results: Sequence[Dict[str, Any]]) -> str:
    rows = [
        "| services x backends | sync (s) | kernel memory (MiB) | per service (B) | RSS (MiB) "
        "| connect4 to a service / to none (ns) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["connect4_ns"]
        rows.append(
            f"| {r['services']:,} x {r['backends_per_service']} | {r['sync_s']:.2f} | "
            f"{r['kernel_bytes'] / 2**20:.1f} | {r['kernel_bytes_per_service']:,.0f} | "
            f"{r['rss_mib']['after_sync']:.0f} | {c['service']['median']:.0f} / {c['direct']['median']:.0f} |"
        )
    return "\n".join(rows)


def svg(results: Sequence[Dict[str, Any]], title: str = "connect4 cost against the number of services") -> str:
    """A line plot (log x) of connect4's median cost per scale, written by hand (no matplotlib needed)."""
    import math

    w, h, left, right, top, bottom = 640, 360, 70, 20, 40, 50
    xs = [math.log10(max(1, r["services"])) for r in results]
    series = {
        "to a service": ([r["connect4_ns"]["service"]["median"] for r in results], "#1f77b4"),
        "to no service": ([r["connect4_ns"]["direct"]["median"] for r in results], "#ff7f0e"),
    }
    ymax = max(max(v) for v, _ in series.values()) * 1.25 or 1.0
    xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(x: float) -> float:
        return left + (x - xmin) / (xmax - xmin) * (w - left - right)

    def py(y: float) -> float:
        return h - bottom - y / ymax * (h - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
        f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">services (log scale)</text>',
        f'<text x="16" y="{h / 2}" text-anchor="middle" transform="rotate(-90 16 {h / 2})">ns per connect4 run</text>',
    ]
    for r, x in zip(results, xs):
        parts.append(f'<text x="{px(x):.1f}" y="{h - bottom + 16}" text-anchor="middle">{r["services"]:,}</text>')
    for k in range(5):
        y = ymax * k / 4
        parts.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.0f}</text>')
        parts.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{w - right}" y2="{py(y):.1f}" stroke="#ddd"/>')
    for i, (name, (ys, color)) in enumerate(series.items()):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in zip(xs, ys):
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{left + 10}" y="{top + 14 + 16 * i}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def ascii_plot(results: Sequence[Dict[str, Any]], width: int = 50) -> str:
    """The same as bars, for a terminal."""
    top = max(r["connect4_ns"]["service"]["median"] for r in results) or 1.0
    lines = []
    for r in results:
        v = r["connect4_ns"]["service"]["median"]
        lines.append(f"{r['services']:>9,} | {'#' * max(1, round(v / top * width))} {v:.0f} ns")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--scales", default=",".join(map(str, SCALES)), help="numbers of services")
    ap.add_argument("--backends", type=int, default=10, help="backends per service (default 10)")
    ap.add_argument("-n", type=int, default=20000, help="connects per measurement (default 20000)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per scale (default 3)")
    ap.add_argument("--probe-services", type=int, default=16, help="services dialled to check balancing")
    ap.add_argument("--probes", type=int, default=40, help="connects to each of them")
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "scale.json"), help="JSON results")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.scale: run as root (lab namespaces, BPF)", file=sys.stderr)
        return 2
    scales = [int(x.replace("_", "")) for x in a.scales.split(",") if x.strip()]
    if not scales or any(not 1 <= s <= MAX_SERVICES for s in scales) or not 1 <= a.backends <= 64:
        ap.error(f"scales must be in 1..{MAX_SERVICES} and --backends in 1..64")
    results = []
    for n in scales:
        print(f"{n:,} services:", flush=True)
        results.append(measure(n, a.backends, a.n, a.rounds, a.probe_services, a.probes))
    print()
    print(table(results))
    print()
    print(ascii_plot(results))
    flat = flatness(results)
    print(f"connect4 to a service, largest over smallest median across scales: {flat:.2f}x")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(
                {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "flatness": flat, "results": results},
                f,
                indent=1,
            )
        plot = os.path.splitext(a.out)[0] + ".svg"
        with open(plot, "w") as f:
            f.write(svg(results))
        print(f"wrote {a.out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
