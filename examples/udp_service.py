"""A UDP service: unconnected and connected sockets, replies from the VIP.

Run as root:  .venv/bin/python examples/udp_service.py

recvfrom() shows the service address the datagram was sent to, never the
backend's; a socket keeps its backend across datagrams.
"""

from __future__ import annotations

import json

from socklb import Backend, Balancer, Service
from socklb.testing.lab import Lab

CLIENT = r"""
import json, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
seen = []
for _ in range(5):
    s.sendto(b"hello", ("10.96.0.53", 53))
    data, src = s.recvfrom(100)
    seen.append([data.decode().strip(), "%s:%d" % src])
print(json.dumps(seen))
"""


def main() -> None:
    with Lab() as lab:
        client = lab.add_pod("client")
        dns = [lab.add_pod(f"dns-{i}") for i in range(2)]
        for pod in dns:
            pod.serve(pod.name, udp=[5353])
        with Balancer() as lb:
            lb.upsert(Service("10.96.0.53", 53, "udp", [Backend(p.ipv4, 5353) for p in dns]))
            lb.attach(client.cgroup)
            for _ in range(3):
                seen = json.loads(client.python(CLIENT))
                names = {name for name, _ in seen}
                sources = {src for _, src in seen}
                assert len(names) == 1 and sources == {"10.96.0.53:53"}, seen
                print(f"one socket, 5 datagrams: answered by {names.pop()}, replies from {sources.pop()}")


if __name__ == "__main__":
    main()
