"""Balance a TCP service for one pod, then change its backends.

Run as root:  .venv/bin/python examples/basic_tcp.py

Everything happens in a throwaway lab (network namespaces and cgroups that
socklb.testing.lab creates and removes), never in the host's network.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from socklb import Backend, Balancer, Service
from socklb.testing.lab import Lab


def dial(pod, host: str, port: int, n: int) -> Counter[str]:  # type: ignore[no-untyped-def]
    """Connect n times from inside the pod; count which backend answered."""
    out = pod.run([sys.executable, "-m", "socklb.testing.client", "tcp", host, str(port), "-n", str(n)]).stdout
    res = json.loads(out)
    assert not res["errors"], res["errors"]
    assert set(res["peers"]) == {f"{host}:{port}"}, "getpeername() shows the service address"
    return Counter(res["served"])


def main() -> None:
    with Lab() as lab:
        client = lab.add_pod("client")
        web = [lab.add_pod(f"web-{i}") for i in range(3)]
        for pod in web:
            pod.serve(pod.name, tcp=[8080])

        svc = Service("10.96.0.10", 80, "tcp", [Backend(p.ipv4, 8080) for p in web])
        with Balancer() as lb:
            lb.upsert(svc)
            lb.attach(client.cgroup)  # balances every socket the client pod opens
            print("3 backends:", dict(dial(client, "10.96.0.10", 80, 90)))

            lb.upsert(svc.with_backends([Backend(web[0].ipv4, 8080)]))
            print("1 backend: ", dict(dial(client, "10.96.0.10", 80, 10)))


if __name__ == "__main__":
    main()
