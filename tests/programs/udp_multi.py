"""One unconnected UDP socket sends to every VIP of argv[1:] per round; the
number of rounds is read from stdin, then each round waits for a line.  Prints
per round who answered and from where, as JSON."""

from __future__ import annotations

import json
import socket
import sys

vips = sys.argv[1:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
out = []
for _rnd in range(int(input())):
    for v in vips:
        s.sendto(b"peer\n", (v, 53))
        data, src = s.recvfrom(100)
        out.append([v, src[0], src[1], data.decode().split()[0]])
    print(json.dumps(out), flush=True)
    out = []
    input()
