"""Routing by workload identity: two pods dial the same VIP and reach different versions.

Run as root:  .venv/bin/python examples/per_workload_routing.py

A Balancer balances the sockets of the cgroups it is attached to, and every
pod has a cgroup of its own.  So a mesh agent that gives pod A's cgroup a
Balancer whose ``10.96.0.10:80`` is version 1, and pod B's cgroup one whose
``10.96.0.10:80`` is version 2, routes the two workloads differently with no
header, no sidecar and no change to either application: the decision is made
in ``connect()``, from which cgroup the socket belongs to.  Both pods still see
the VIP in ``getpeername()``.

A third Balancer is attached to the lab's whole cgroup subtree (the way a node
agent attaches to a node's kubepods cgroup) with both versions: pod C, which
has no Balancer of its own, gets that default.  Pods A and B are in the subtree
too, and their own Balancer wins, because the first socklb program that knows
the destination translates it and the programs of a socket's own cgroup run
before its parents' (see "Nested and overlapping attachments" in the README).

Then pod B alone is moved to version 1 with one ``upsert`` on its Balancer;
pod A and pod C see no change.

Everything runs in a throwaway lab (socklb.testing.lab: network namespaces and cgroups
that are removed at the end); in each step the three pods make 150 short
connections each, at the same time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

from socklb import Backend, Balancer, Service
from socklb.testing.lab import Lab

VIP, PORT, TARGET = "10.96.0.10", 80, 8080
N = 150  # connections per pod and step


def dial(pods: dict[str, Any]) -> dict[str, Counter[str]]:
    """N connections from inside each pod to the VIP, the pods at the same time:
    which backend answered each one."""
    argv = [sys.executable, "-m", "socklb.testing.client", "tcp", VIP, str(PORT), "-n", str(N)]
    procs = {name: pod.popen(argv, stdout=subprocess.PIPE, text=True) for name, pod in pods.items()}
    seen = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        res = json.loads(out)
        assert set(res["peers"]) <= {f"{VIP}:{PORT}"}, "getpeername() shows the VIP"
        seen[name] = Counter(res["served"] + [f"error:{e}" for e in res["errors"]])
    return seen


def report(step: str, pods: dict[str, Any]) -> None:
    print(f"{step}; each dials {VIP}:{PORT}")
    for name, seen in dial(pods).items():
        total = sum(seen.values())
        share = {v: 100 * sum(c for b, c in seen.items() if b.startswith(v)) / total for v in ("v1", "v2")}
        shares = "  ".join(f"{v} {pct:5.1f}%" for v, pct in share.items())
        failed = sum(c for b, c in seen.items() if b.startswith("error:"))
        detail = ", ".join(f"{b} {c}" for b, c in sorted(seen.items()))
        print(f"  {name}: {total} connections  {shares}  failed {failed}   ({detail})")


def main() -> None:
    with Lab() as lab:
        clients = {name: lab.add_pod(name) for name in ("pod-a", "pod-b", "pod-c")}
        v1 = [lab.add_pod(f"v1-web-{i}") for i in (1, 2)]
        v2 = [lab.add_pod(f"v2-web-{i}") for i in (1, 2)]
        for pod in v1 + v2:
            pod.serve(pod.name, tcp=[TARGET])  # answers with its name

        web_v1 = Service(VIP, PORT, "tcp", [Backend(p.ipv4, TARGET) for p in v1])
        web_v2 = web_v1.with_backends([Backend(p.ipv4, TARGET) for p in v2])
        both = web_v1.with_backends([Backend(p.ipv4, TARGET) for p in v1 + v2])

        with Balancer() as node_lb, Balancer() as lb_a, Balancer() as lb_b:
            node_lb.upsert(both)
            node_lb.attach(lab.cgroup)  # the default for every pod in the subtree
            lb_a.upsert(web_v1)
            lb_a.attach(clients["pod-a"].cgroup)  # pod A's own view of the VIP
            lb_b.upsert(web_v2)
            lb_b.attach(clients["pod-b"].cgroup)  # pod B's own view of the VIP

            report("pod-a has a Balancer of its own (v1), pod-b too (v2), pod-c only the node's (v1+v2)", clients)
            lb_b.upsert(web_v1)
            report("pod-b's Balancer moved to v1 (one upsert; pod-a and pod-c untouched)", clients)


if __name__ == "__main__":
    main()
