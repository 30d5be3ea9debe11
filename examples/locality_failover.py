"""Locality with failover: same-zone backends first, the other zone when they fail, back when they recover.

Run as root:  .venv/bin/python examples/locality_failover.py

A client pod in zone-a dials ``10.96.0.20:80`` without pause while a small
controller (what a mesh or node agent would run) programs the service from
the endpoints' zones and readiness:

- the ready endpoints of the client's zone, if there is one;
- otherwise the ready endpoints of every zone (fail over);

and upserts the result whenever readiness changes.  An ``upsert`` is atomic for
the datapath - a racing ``connect()`` sees the old backend set or the new one,
never a mix or an empty set - and the endpoints whose readiness probe fails are
still serving (a readiness failure, not a crash), so the connections already
made to them finish.  The phases:

1. all four endpoints ready: the client stays in zone-a (a1, a2);
2. a1 and a2 fail their readiness probe: everything goes to zone-b (b1, b2);
3. a1 recovers: back to zone-a, to a1 alone;
4. a2 recovers: zone-a, a1 and a2.

For each phase it prints where the connections that started and finished in
that phase went, and at the end how many connections failed in the whole run
(0).  The lab (socklb.testing.lab) has one node namespace, so the zones here are just
labels the controller reads; in a cluster they are the nodes'
``topology.kubernetes.io/zone``.  With Kubernetes, ``socklb.kubernetes`` makes
the same decision from the EndpointSlice's zone hints (kube-proxy's topology
rules: a zone's hints are used while some ready endpoint is hinted for it), see
``examples/kubernetes_agent.py``.

The load is bounded: one connection at a time, 1 ms apart, for at most 30 s or 20,000
connections, stopped by SIGTERM when the last phase is over.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass

from socklb import Backend, Balancer, Service
from socklb.testing.lab import Lab
from socklb.testing.load import Load

VIP, PORT, TARGET = "10.96.0.20", 80, 8080
PHASE_SECONDS = 0.8  # and at least 50 connections


@dataclass
class Endpoint:
    name: str
    address: str
    zone: str
    ready: bool = True


def desired(endpoints: list[Endpoint], zone: str) -> Service:
    """The controller's rule: the ready endpoints of ``zone``, else every ready endpoint."""
    ready = [e for e in endpoints if e.ready]
    chosen = [e for e in ready if e.zone == zone] or ready
    return Service(VIP, PORT, "tcp", [Backend(e.address, TARGET) for e in chosen])


def main() -> None:
    with Lab() as lab:
        client = lab.add_pod("client")  # in zone-a
        endpoints = []
        for name, zone in (("a1", "zone-a"), ("a2", "zone-a"), ("b1", "zone-b"), ("b2", "zone-b")):
            pod = lab.add_pod(name)
            pod.serve(name, tcp=[TARGET])
            endpoints.append(Endpoint(name, pod.ipv4, zone))
        ep = {e.name: e for e in endpoints}
        zone_of = {e.name: e.zone for e in endpoints}
        name_of = {e.address: e.name for e in endpoints}

        phases = [
            ("all ready", {}),
            ("a1, a2 unready", {"a1": False, "a2": False}),
            ("a1 recovered", {"a1": True}),
            ("a2 recovered", {"a2": True}),
        ]
        windows: list[tuple[str, str, float, float]] = []  # phase, programmed, begin, end
        with Balancer() as lb:
            lb.upsert(desired(endpoints, "zone-a"))
            lb.attach(client.cgroup)
            load = Load(client, VIP, PORT, max_n=20000, max_seconds=30)
            try:
                for title, change in phases:
                    for name, ready in change.items():
                        ep[name].ready = ready  # what the readiness probes report
                    svc = desired(endpoints, "zone-a")
                    lb.upsert(svc)
                    begin = time.monotonic()
                    end = load.hold(begin, PHASE_SECONDS)
                    programmed = " ".join(sorted(name_of[b.address] for b in svc.backends))
                    windows.append((title, programmed, begin, end))
            finally:
                log = load.stop()

        placed = 0
        for i, (title, programmed, begin, end) in enumerate(windows, 1):
            got = load.between(begin, end)
            placed += sum(got.values())
            total = sum(got.values()) or 1
            share = {
                z: 100 * sum(c for who, c in got.items() if zone_of.get(who) == z) / total for z in ("zone-a", "zone-b")
            }
            detail = ", ".join(f"{who} {c}" for who, c in sorted(got.items()))
            print(
                f"phase {i}  {title:15} programmed {programmed:6}  {sum(got.values()):5} connections"
                f"  zone-a {share['zone-a']:5.1f}%  zone-b {share['zone-b']:5.1f}%  ({detail})"
            )
        failed = [c.who for c in log if c.failed]
        print(
            f"failed connections: {len(failed)} of {len(log)}"
            f" ({len(log) - placed} were under way while the backends changed, counted in no phase)"
        )
        if failed:
            print("errors:", dict(Counter(failed)))
            sys.exit(1)


if __name__ == "__main__":
    main()
