"""``socklb demo``: a throwaway lab, a service, and where its connections went.

It builds a lab (a node namespace, a client pod and backend pods), programs a
service, attaches to the client pod's cgroup and shows where a few hundred
connections to the service address went.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Dict, List

from socklb.balancer import Balancer
from socklb.model import Backend, Service
from socklb.testing.lab import SERVICE_CIDR4, Lab, Pod

__all__ = ["demo"]


def _bar(n: int, total: int, width: int = 40) -> str:
    return "#" * round(width * n / total) if total else ""


def demo(backends: int, connections: int, quiet: bool = False) -> int:
    """Run the demo; returns the process exit status."""

    def say(*a: object) -> None:
        if not quiet:
            print(*a, flush=True)

    vip4, vip6, port, target = "10.96.0.10", "fd00:96::a", 80, 8080
    failed = False
    with Lab() as lab:
        client = lab.add_pod("client")
        pods = [lab.add_pod(f"backend-{i + 1}") for i in range(backends)]
        for p in pods:
            p.serve(p.name, tcp=[target])
        say(f"lab {lab.id}: node namespace, client pod {client.ipv4} / {client.ipv6}")
        for p in pods:
            say(f"  {p.name}: {p.ipv4} / {p.ipv6}, serving tcp/{target}")
        say(f"service CIDRs {SERVICE_CIDR4} and the IPv6 one are unreachable routes in the node namespace")

        before = _dial(client, vip4, port, 1)
        why = before["errors"][0] if before["errors"] else "it did not fail?!"
        say(f"\nwithout socklb, connect({vip4}:{port}) fails: {why} (the VIP is an unreachable route)")

        with Balancer() as lb:
            svc4 = Service(vip4, port, "tcp", [Backend(p.ipv4, target) for p in pods])
            svc6 = Service(vip6, port, "tcp", [Backend(p.ipv6, target) for p in pods])
            lb.upsert(svc4)
            lb.upsert(svc6)
            lb.attach(client.cgroup)
            say(f"programmed {svc4} and {svc6} with {backends} backends each; attached to {client.cgroup}")
            for host in (vip4, vip6, "::ffff:" + vip4):
                t0 = time.monotonic()
                res = _dial(client, host, port, connections)
                dt = time.monotonic() - t0
                served = Counter(res["served"])
                peers = Counter(res["peers"])
                label = _peer(host, port)
                say(f"\n{connections} connections to {label} in {dt:.2f} s, {len(res['errors'])} failed")
                for name in sorted(served):
                    say(f"  {name:<12} {served[name]:>5}  {_bar(served[name], connections)}")
                say("  getpeername() returned: " + ", ".join(f"{p} x{c}" for p, c in peers.items()))
                if res["errors"] or len(served) != backends or set(peers) != {_peer(host, port)}:
                    failed = True
                    for e in res["errors"][:5]:
                        say(f"  error: {e}")
            c = lb.counters()
            say(
                f"\ndatapath counters: {c['connect']} connects translated, "
                f"{c['getpeername']} getpeername() answers rewritten"
            )
    say("\nlab removed" + ("; the demo FAILED" if failed else "; every backend served, every peer was the VIP"))
    return 1 if failed else 0


def _peer(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dial(pod: Pod, host: str, port: int, n: int) -> Dict[str, List[str]]:
    argv = [sys.executable, "-m", "socklb.testing.client", "tcp", host, str(port), "-n", str(n)]
    out: Dict[str, List[str]] = json.loads(pod.run(argv, timeout=300).stdout)
    return out
