"""Session affinity, weights and backend states.

Run as root:  .venv/bin/python examples/affinity_and_states.py
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from socklb import Affinity, Backend, BackendState, Balancer, Service
from socklb.testing.lab import Lab


def main() -> None:
    with Lab() as lab:
        client = lab.add_pod("client")
        pods = [lab.add_pod(f"web-{i}") for i in range(3)]
        for pod in pods:
            pod.serve(pod.name, tcp=[8080])

        def dial(n: int) -> Counter[str]:
            argv = [sys.executable, "-m", "socklb.testing.client", "tcp", "10.96.0.10", "80", "-n", str(n)]
            return Counter(json.loads(client.run(argv).stdout)["served"])

        with Balancer() as lb:
            lb.attach(client.cgroup)
            weighted = [Backend(p.ipv4, 8080, weight=w) for p, w in zip(pods, (1, 2, 7))]
            lb.upsert(Service("10.96.0.10", 80, "tcp", weighted))  # every algorithm honours weights
            print("weights 1:2:7      ", dict(dial(300)))

            plain = [Backend(p.ipv4, 8080) for p in pods]
            lb.upsert(Service("10.96.0.10", 80, "tcp", plain, affinity=Affinity(timeout=60)))
            print("ClientIP affinity  ", dict(dial(15)))

            states = [BackendState.TERMINATING, BackendState.QUARANTINED, BackendState.MAINTENANCE]
            fallback = [Backend(p.ipv4, 8080, state=s) for p, s in zip(pods, states)]
            lb.upsert(Service("10.96.0.10", 80, "tcp", fallback))
            print("only terminating   ", dict(dial(10)))


if __name__ == "__main__":
    main()
