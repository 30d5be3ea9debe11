"""The ``socklb`` command.

``socklb demo`` builds a lab (a node namespace, a client pod and backend pods),
programs a service, attaches to the client pod's cgroup and shows where a few
hundred connections to the service address went.  ``socklb cleanup`` removes
what a crashed lab left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from .errors import SocklbError

if TYPE_CHECKING:
    from .lab import Pod

__all__ = ["main"]


def _bar(n: int, total: int, width: int = 40) -> str:
    return "#" * round(width * n / total) if total else ""


def demo(backends: int, connections: int, quiet: bool = False) -> int:
    """Run the demo; returns the process exit status."""
    from . import Backend, Balancer, Service
    from .lab import SERVICE_CIDR4, Lab

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
    argv = [sys.executable, "-m", "socklb.labclient", "tcp", host, str(port), "-n", str(n)]
    out: Dict[str, List[str]] = json.loads(pod.run(argv, timeout=300).stdout)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="socklb", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="balance connections in a throwaway lab and show the result")
    d.add_argument("--backends", type=int, default=3, help="backend pods (default 3)")
    d.add_argument("--connections", type=int, default=300, help="connections per address family (default 300)")
    sub.add_parser("cleanup", help="remove namespaces and cgroups left by a crashed lab")
    from . import opscli

    opscli.register(sub)
    args = ap.parse_args(argv)
    rc = opscli.run(args)
    if rc is not None:
        return rc
    try:
        if args.cmd == "demo":
            if not 1 <= args.backends <= 32 or not 1 <= args.connections <= 100000:
                ap.error("--backends must be 1..32 and --connections 1..100000")
            return demo(args.backends, args.connections)
        from .lab import cleanup_leftovers

        n = cleanup_leftovers()
        print(f"removed {n} leftover lab objects")
        return 0
    except SocklbError as e:
        print(f"socklb: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
