"""argv[2] unconnected UDP sockets each send to argv[1]:53 per round; per round
one JSON line of who answered ("wrong-source" if the reply is not from the
VIP); a round per line on stdin, until it closes."""

from __future__ import annotations

import json
import socket
import sys

vip, n = sys.argv[1], int(sys.argv[2])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
for s in socks:
    s.settimeout(2)
while True:
    out = []
    for s in socks:
        s.sendto(b"peer\n", (vip, 53))
        data, src = s.recvfrom(100)
        out.append(data.decode().split()[0] if src == (vip, 53) else "wrong-source")
    print(json.dumps(out), flush=True)
    if not sys.stdin.readline():
        break
