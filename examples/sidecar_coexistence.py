"""socklb beside a sidecar mesh: the pods with a sidecar are excluded, the others balanced at the socket.

Run as root:  .venv/bin/python examples/sidecar_coexistence.py

A sidecar mesh (Istio, Linkerd) puts an iptables ``nat OUTPUT REDIRECT`` rule
in each of its pods, which sends every outgoing TCP connection to the pod's
proxy; the proxy asks the kernel where the application meant to go
(``getsockopt(SOL_IP, SO_ORIGINAL_DST)``) and routes by that service address.
socklb rewrites a ``connect()`` before the packet reaches that rule, so the
proxy would see a backend's address instead of the VIP and lose its routing,
policy and telemetry.  The mesh agent therefore excludes its pods from the
balancer's attachment (``Attachment.exclude``), at run time, as pods come and
go; the other pods keep socket-level balancing.

What it does, in a throwaway lab (namespaces and cgroups that socklb.testing.lab
creates and removes; no packet leaves them):

1. ``meshed`` is a pod with a toy sidecar (``socklb.testing.sidecar``: a REDIRECT
   rule and a small proxy that has its own table of services) and ``plain`` a
   pod without one; ``web-1`` and ``web-2`` serve the service 10.96.0.10:80.
2. The balancer is attached to the cgroup above every pod (a subtree
   attachment, as a node agent makes), and the service programmed.
3. Before the mesh agent acts, ``meshed``'s proxy sees a backend as original
   destination: it cannot tell which service was dialled.
4. The mesh agent excludes ``meshed``: its proxy now sees the VIP, while
   ``plain`` is still balanced at the socket (no proxy in its path).

It prints one line per step, for example::

    plain:  balanced at the socket over web-1, web-2
    meshed before exclusion: the sidecar saw 10.244.4.2:8080 (a backend, not the VIP)
    meshed after exclusion:  the sidecar saw 10.96.0.10:80 (the VIP) 12 of 12 times
    plain after exclusion:   balanced at the socket over web-1, web-2
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from socklb import Backend, Balancer, Service
from socklb.testing.lab import SERVICE_CIDR4, Lab

VIP, PORT = "10.96.0.10", 80
SIDECAR_PORT = 15001

# One request; prints the first line of the answer (the sidecar's report, when
# there is a sidecar) and the serving backend's name.
FETCH = (
    "import socket, sys\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
    "    s.sendall(b'hi\\n'); s.shutdown(socket.SHUT_WR); d = b''\n"
    "    while (x := s.recv(4096)):\n"
    "        d += x\n"
    "    print(d.decode().strip().replace(chr(10), ' | '))\n"
)


def fetch(pod, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    return list(pod.python(FETCH, VIP, str(PORT), str(n)).splitlines())


def sidecar_saw(line: str) -> str:
    """The original destination in the sidecar's line ``via-sidecar orig=A:P upstream=B:Q | name``."""
    assert line.startswith("via-sidecar "), f"not through the sidecar: {line!r}"
    return line.split()[1].removeprefix("orig=")


def main() -> None:
    with Lab() as lab:
        meshed, plain = lab.add_pod("meshed"), lab.add_pod("plain")
        web = [lab.add_pod("web-1"), lab.add_pod("web-2")]
        for pod in web:
            pod.serve(pod.name, tcp=[8080])

        # The mesh's side of the pod: the REDIRECT rule and the proxy, which
        # knows the service's endpoints from its own control plane.  (The lab
        # makes the service range unreachable in every pod; a meshed pod needs
        # it routed, as in a cluster, so that its connect() reaches the rule.)
        meshed.run(["ip", "route", "del", "unreachable", SERVICE_CIDR4])
        route = f"{VIP}:{PORT}=" + ",".join(f"{p.ipv4}:8080" for p in web)
        proxy = meshed.popen(
            [sys.executable, "-m", "socklb.testing.sidecar", str(SIDECAR_PORT), "--install", "--route", route],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"

        with Balancer() as lb:
            lb.upsert(Service(VIP, PORT, "tcp", [Backend(p.ipv4, 8080) for p in web]))
            pods = lb.attach(lab.cgroup)  # every pod of the node, as a node agent attaches

            served = Counter(fetch(plain, 12))
            assert set(served) == {"web-1", "web-2"}, served
            print("plain:  balanced at the socket over", ", ".join(sorted(served)))

            seen = sidecar_saw(fetch(meshed, 1)[0])
            assert seen != f"{VIP}:{PORT}"
            print(f"meshed before exclusion: the sidecar saw {seen} (a backend, not the VIP)")

            # The mesh agent's one call, when it injects a sidecar into a pod.
            pods.exclude(meshed.cgroup)
            lines = fetch(meshed, 12)
            seen_all = Counter(sidecar_saw(line) for line in lines)
            assert seen_all == {f"{VIP}:{PORT}": 12}, seen_all
            n = seen_all[f"{VIP}:{PORT}"]
            print(f"meshed after exclusion:  the sidecar saw {VIP}:{PORT} (the VIP) {n} of 12 times")

            served = Counter(fetch(plain, 12))
            assert set(served) == {"web-1", "web-2"}, served
            print("plain after exclusion:   balanced at the socket over", ", ".join(sorted(served)))
            print(json.dumps({"excluded": [c.rsplit("/", 1)[1] for c in pods.excluded]}))


if __name__ == "__main__":
    main()
