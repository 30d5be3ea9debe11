"""One UDP socket: sendto the VIP argv[1], then connect to argv[2] and send
twice; who answered each, from where, and the final peer, as JSON."""

from __future__ import annotations

import json
import socket
import sys
from typing import Callable

a, b = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
out = []


def step(send: Callable[[], object]) -> None:
    send()
    data, src = s.recvfrom(100)
    out.append([data.decode().split()[0], list(src[:2])])


step(lambda: s.sendto(b"peer\n", (a, 53)))
s.connect((b, 53))
for _ in range(2):
    step(lambda: s.send(b"peer\n"))
out.append(list(s.getpeername()[:2]))
print(json.dumps(out))
