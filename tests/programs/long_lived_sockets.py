"""Hold a TCP connection, a connected UDP socket and an unconnected UDP socket
to the VIP argv[1] (TCP port argv[2], UDP port argv[3]); report their peers
and who served them as JSON, then again after a line on stdin."""

from __future__ import annotations

import json
import socket
import sys

vip, tport, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def report() -> None:
    out = {"tcp_peer": "{}:{}".format(*t.getpeername()[:2]), "cu_peer": "{}:{}".format(*cu.getpeername()[:2])}
    cu.send(b"x\n")
    out["cu_served"] = cu.recv(4096).split()[0].decode()
    u.sendto(b"x\n", (vip, uport))
    data, src = u.recvfrom(4096)
    out["u_src"] = "{}:{}".format(*src[:2])
    out["u_served"] = data.split()[0].decode()
    print(json.dumps(out), flush=True)


t = socket.create_connection((vip, tport), timeout=5)
cu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cu.settimeout(5)
cu.connect((vip, uport))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
report()
sys.stdin.readline()
report()
