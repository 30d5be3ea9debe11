"""Cost of cgroup/connect4 for connects that are NOT to a service (the hot path).

    .venv/bin/python -m bench.connect_cost [-n 20000] [--rounds 5] [--to-service]

Builds a lab (client pod, one backend pod), programs one TCP and one UDP
service the client never dials, attaches to the client pod and, with kernel
BPF statistics on, makes ``n`` TCP connects (connect, close) and ``n`` UDP
connects straight to the backend pod's address.  Prints the median over the
rounds of connect4's average run time per call, in ns, for each protocol.
With ``--to-service`` the connects go to the services instead (the
translating path); with ``--reuse`` one UDP socket connects ``n`` times, so
no socket-local storage is allocated after the first and what is left is the
lookup, the choice and the rewrite (the figure to compare builds with).

With ``--weights 3,1`` the services get one backend per weight, all of
weight 1, and a twin of each service gets them with the weights given (an
alias-table pick); both are dialled in every round, so ``<proto>-weighted``
compares with ``<proto>`` in the same run:

    .venv/bin/python -m bench.connect_cost --to-service --reuse --weights 3,1

With ``--frontends`` it measures what wildcard frontends (NodePorts) cost the
other connects, in one lab and interleaved rounds (TCP, new socket each):
``miss`` and ``service`` (a connect to a pod, to a ClusterIP) without any
NodePort programmed, ``miss+np`` and ``service+np`` with NodePorts and the
node's addresses programmed, ``miss-node-addr`` (a connect to a node address
on a port that is no NodePort: the port bitmap stops it) and ``nodeport`` (a
connect to a NodePort on a node address: the exact lookup misses, then the
wildcard one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Dict, List, Optional, Sequence

from bench.system import bpf_stats
from socklb import Backend, Balancer, Service
from socklb.testing.lab import Lab

CLIENT = r"""
import socket, sys
host, port, n, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
if proto == "udp-reuse":  # one UDP socket connected n times: no storage allocated after the first
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(n):
        s.connect((host, port))
    s.close()
    sys.exit(0)
for _ in range(n):
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.connect((host, port))
    except ConnectionRefusedError:  # --frontends: a node port nothing listens on
        pass
    s.close()
"""


def _connect4(lb: Balancer) -> tuple[int, int]:
    st = next(s for s in lb.program_stats() if s.name == "socklb_connect4")
    return st.run_cnt, st.run_time_ns


def measure(
    n: int, rounds: int, to_service: bool = False, reuse: bool = False, weights: Sequence[int] = ()
) -> Dict[str, List[float]]:
    with Lab() as lab, Balancer() as lb:
        client, web = lab.add_pod("client"), lab.add_pod("web")
        k = max(len(weights), 1)
        web.serve("web", tcp=[8080 + i for i in range(k)], udp=[5353 + i for i in range(k)])

        def backends(port: int, ws: Sequence[int]) -> List[Backend]:
            return [Backend(web.ipv4, port + i, weight=w) for i, w in enumerate(ws)]

        lb.upsert(Service("10.96.0.10", 80, "tcp", backends(8080, [1] * k)))
        lb.upsert(Service("10.96.0.53", 53, "udp", backends(5353, [1] * k)))
        if weights:
            lb.upsert(Service("10.96.0.11", 80, "tcp", backends(8080, weights)))
            lb.upsert(Service("10.96.0.54", 53, "udp", backends(5353, weights)))
        lb.attach(client.cgroup)
        targets = {"tcp": (web.ipv4, 8080), "udp": (web.ipv4, 5353)}
        if to_service:
            targets = {"tcp": ("10.96.0.10", 80), "udp": ("10.96.0.53", 53)}
            if weights:
                targets.update({"tcp-weighted": ("10.96.0.11", 80), "udp-weighted": ("10.96.0.54", 53)})
        if reuse:
            targets = {"udp-reuse": ("10.96.0.53", 53) if to_service else (web.ipv4, 5353)}
            if weights and to_service:
                targets["udp-reuse-weighted"] = ("10.96.0.54", 53)
        out: Dict[str, List[float]] = {t: [] for t in targets}
        for _ in range(rounds):
            for name, (host, port) in targets.items():
                proto = name.replace("-weighted", "")
                with bpf_stats():
                    c0, t0 = _connect4(lb)
                    client.python(CLIENT, host, str(port), str(n), proto, timeout=300)
                    c1, t1 = _connect4(lb)
                if c1 - c0 < n:
                    raise SystemExit(f"connect4 ran {c1 - c0} times for {n} connects")
                out[name].append((t1 - t0) / (c1 - c0))
        translated = lb.counters()["connect"]
        assert translated == (len(targets) * n * rounds if to_service else 0), f"{translated} connects translated"
    return out


def measure_frontends(n: int, rounds: int) -> Dict[str, List[float]]:
    """See the module docstring (``--frontends``)."""
    out: Dict[str, List[float]] = {}
    with Lab() as lab, Balancer(node_netns=lab.node.netns_path) as lb:
        client, web = lab.add_pod("client"), lab.add_pod("web")
        web.serve("web", tcp=[8080, 8081])
        lb.upsert(Service("10.96.0.10", 80, "tcp", [Backend(web.ipv4, 8080)]))
        lb.attach(client.cgroup)
        nodeports = [Service.node_port(30000 + i, backends=[Backend(web.ipv4, 8080)]) for i in range(8)]

        def run(name: str, host: str, port: int) -> None:
            with bpf_stats():
                c0, t0 = _connect4(lb)
                client.python(CLIENT, host, str(port), str(n), "tcp", timeout=300)
                c1, t1 = _connect4(lb)
            if c1 - c0 < n:
                raise SystemExit(f"connect4 ran {c1 - c0} times for {n} connects")
            out.setdefault(name, []).append((t1 - t0) / (c1 - c0))

        for _ in range(rounds):
            for s in nodeports:
                if s.key in {x.key for x in lb.services()}:
                    lb.remove(s)
            lb.set_node_addresses([])
            run("miss", web.ipv4, 8081)
            run("service", "10.96.0.10", 80)
            for s in nodeports:
                lb.upsert(s)
            lb.set_node_addresses([client.gateway4, web.gateway4])
            run("miss+np", web.ipv4, 8081)
            run("service+np", "10.96.0.10", 80)
            run("nodeport", client.gateway4, 30000)
            # A node address, a port without NodePort (nothing listens: refused
            # by the node after the hook ran).
            run("miss-node-addr", client.gateway4, 30999)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.connect_cost")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--to-service", action="store_true", help="dial the services (translated connects)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="one UDP socket connected n times: the translation without allocating socket storage (low noise)",
    )
    ap.add_argument(
        "--weights",
        type=lambda s: [int(w) for w in s.split(",")],
        default=[],
        help="e.g. 3,1: also dial a twin service whose backends have these weights (with --to-service)",
    )
    ap.add_argument("--frontends", action="store_true", help="what NodePorts cost the other connects (see above)")
    a = ap.parse_args(argv)
    if a.frontends:
        res = measure_frontends(a.n, a.rounds)
    else:
        res = measure(a.n, a.rounds, a.to_service, a.reuse, a.weights)
    summary = {
        p: {"median_ns": round(statistics.median(v), 1), "rounds_ns": [round(x, 1) for x in v]} for p, v in res.items()
    }
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
