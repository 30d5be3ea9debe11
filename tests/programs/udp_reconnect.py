"""One UDP socket that talks to a VIP, then reconnects elsewhere, by mode
(argv[1]: connect, sendto, unspec, direct, sendto-direct): who answered each
step, from which address, and the socket's peer, as JSON.

argv: mode vip other_vip pod_address pod_port"""

from __future__ import annotations

import ctypes
import json
import socket
import sys
from typing import Any, Callable, Dict, List

mode, a, b, pod, pod_port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
fam = socket.AF_INET6 if ":" in a else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(2)
steps: List[List[Any]] = []
out: Dict[str, List[List[Any]]] = {"steps": steps}


def step(name: str, send: Callable[[], object], peer: bool = True) -> None:
    send()
    data, src = s.recvfrom(100)
    p = None
    if peer:
        p = list(s.getpeername()[:2])
    out["steps"].append([name, data.decode().split()[0], list(src[:2]), p])


if mode == "sendto-direct":
    step("vip", lambda: s.sendto(b"peer\n", (a, 53)), peer=False)
    out["steps"][-1][3] = [a, 53]
else:
    s.connect((a, 53))
    step("vip", lambda: s.send(b"peer\n"))
if mode in ("direct", "sendto-direct"):
    s.connect((pod, pod_port))
    step("direct", lambda: s.send(b"peer\n"))
    step("direct", lambda: s.send(b"peer\n"))
else:
    if mode == "unspec":
        libc = ctypes.CDLL(None, use_errno=True)
        unspec = ctypes.create_string_buffer(28)  # sa_family 0 = AF_UNSPEC
        assert libc.connect(s.fileno(), unspec, 28) == 0, ctypes.get_errno()
    for _ in range(3):
        step("other", lambda: s.sendto(b"peer\n", (b, 53)), peer=(mode == "sendto"))
print(json.dumps(out))
