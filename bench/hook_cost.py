"""What each translating hook costs per call, in one lab, from the kernel's BPF statistics.

    .venv/bin/python -m bench.hook_cost [-n 20000] [--rounds 5] [--services 1]
    .venv/bin/python -m bench.hook_cost --compare /path/to/other/.venv/bin/python

Builds a lab (client pod, one backend pod), programs one TCP and one UDP service
per family (plus ``--services`` - 1 TCP fillers) and, with BPF statistics on,
runs ``n`` calls of each workload from the client pod: new TCP sockets that
connect to the VIP and close (connect4, connect6), one unconnected UDP socket
doing sendto/recvfrom to the VIP (sendmsg4/6, recvmsg4/6), and new UDP sockets
that connect (``udpc:connect4``).  Prints, per hook, the median over the rounds
of the average run time per call, in ns, as JSON.

With ``--compare PYTHON`` every round runs twice, once with this interpreter and
once with PYTHON (another build's virtualenv, e.g. one made from an older
commit), alternating, so that both builds see the same machine: the A/B the
README's hook-cost table comes from.  ``before`` is PYTHON, ``after`` this one.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from bench.system import bpf_stats
from socklb import Backend, Balancer, Service
from socklb.lab import Lab

CLIENT = r"""
import socket, sys
host, port, n, what = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
if what == "tcp":
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.connect((host, port))
        s.close()
elif what == "udpc":
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.close()
else:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(n):
        s.sendto(b"x", (host, port))
        s.recvfrom(2048)
"""

VIP_TCP4, VIP_UDP4, VIP_TCP6, VIP_UDP6 = "10.96.0.10", "10.96.0.53", "fd00:96::10", "fd00:96::53"
# (workload, VIP, port, family): what the client runs, and which hooks it times.
RUNS: Tuple[Tuple[str, str, int, str], ...] = (
    ("tcp", VIP_TCP4, 80, "4"),
    ("tcp", VIP_TCP6, 80, "6"),
    ("udp", VIP_UDP4, 53, "4"),
    ("udp", VIP_UDP6, 53, "6"),
    ("udpc", VIP_UDP4, 53, "4"),
)


def _stats(lb: Balancer) -> Dict[str, Tuple[int, int]]:
    return {s.name: (s.run_cnt, s.run_time_ns) for s in lb.program_stats()}


def measure(n: int, rounds: int, services: int) -> Dict[str, List[float]]:
    """Average ns per call of each hook, one value per round."""
    out: Dict[str, List[float]] = {}
    with Lab() as lab, Balancer() as lb:
        client, web = lab.add_pod("client"), lab.add_pod("web")
        web.serve("web", tcp=[8080], udp=[5353])
        svcs = [
            Service(VIP_TCP4, 80, "tcp", [Backend(web.ipv4, 8080)]),
            Service(VIP_UDP4, 53, "udp", [Backend(web.ipv4, 5353)]),
            Service(VIP_TCP6, 80, "tcp", [Backend(web.ipv6, 8080)]),
            Service(VIP_UDP6, 53, "udp", [Backend(web.ipv6, 5353)]),
        ]
        base = int(ipaddress.ip_address("10.100.0.0"))
        svcs += [
            Service(str(ipaddress.ip_address(base + i)), 80, "tcp", [Backend(web.ipv4, 8080)])
            for i in range(max(services - 1, 0))
        ]
        lb.sync(svcs)
        lb.attach(client.cgroup)
        for _ in range(rounds):
            for what, host, port, fam in RUNS:
                with bpf_stats():
                    a = _stats(lb)
                    client.python(CLIENT, host, str(port), str(n), what, timeout=600)
                    b = _stats(lb)
                for hook in ("sendmsg", "recvmsg") if what == "udp" else ("connect",):
                    name = f"socklb_{hook}{fam}"
                    cnt = b[name][0] - a[name][0]
                    if cnt < n:
                        raise SystemExit(f"{name} ran {cnt} times for {n} calls")
                    out.setdefault(f"{what}:{hook}{fam}", []).append((b[name][1] - a[name][1]) / cnt)
    return out


def _other(python: str, n: int, services: int) -> Dict[str, List[float]]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [python, "-m", "bench.hook_cost", "-n", str(n), "--rounds", "1", "--services", str(services), "--raw"]
    r = subprocess.run(argv, cwd=here, capture_output=True, text=True, timeout=3600, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{python}: exited with {r.returncode}: {r.stderr.strip()[-2000:]}")
    res: Dict[str, List[float]] = json.loads(r.stdout)
    return res


def _summary(res: Dict[str, List[float]]) -> Dict[str, object]:
    return {
        k: {"median_ns": round(statistics.median(v), 1), "rounds_ns": [round(x, 1) for x in v]} for k, v in res.items()
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hook_cost")
    ap.add_argument("-n", type=int, default=20000, help="calls per workload and round (default 20000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--services", type=int, default=1, help="services programmed, fillers included (default 1)")
    ap.add_argument("--compare", metavar="PYTHON", help="alternate rounds with another build's interpreter")
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.n < 1 or a.rounds < 1 or a.services < 1:
        ap.error("-n, --rounds and --services must be positive")
    if a.raw:
        json.dump(measure(a.n, a.rounds, a.services), sys.stdout)
        return 0
    if not a.compare:
        json.dump(_summary(measure(a.n, a.rounds, a.services)), sys.stdout)
        sys.stdout.write("\n")
        return 0
    before: Dict[str, List[float]] = {}
    after: Dict[str, List[float]] = {}
    for _ in range(a.rounds):
        for k, v in _other(a.compare, a.n, a.services).items():
            before.setdefault(k, []).extend(v)
        for k, v in measure(a.n, 1, a.services).items():
            after.setdefault(k, []).extend(v)
    report = {
        k: {
            "before_ns": round(statistics.median(before[k]), 1),
            "after_ns": round(statistics.median(after[k]), 1),
            "ratio": round(statistics.median(after[k]) / statistics.median(before[k]), 2),
            "before_rounds_ns": [round(x, 1) for x in before[k]],
            "after_rounds_ns": [round(x, 1) for x in after[k]],
        }
        for k in after
        if k in before
    }
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
