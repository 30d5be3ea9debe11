"""One UDP socket sends to every VIP of argv[2:] then reads the replies, argv[1]
rounds; per round the sorted reply sources, as JSON."""

from __future__ import annotations

import json
import socket
import sys

rounds, vips = int(sys.argv[1]), sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for _round in range(rounds):
    for v in vips:
        s.sendto(b"peer\n", (v, 53))
    seen = []
    for _vip in vips:
        data, src = s.recvfrom(200)
        seen.append(f"{src[0]}:{src[1]}")
    print(json.dumps(sorted(seen)), flush=True)
