"""One UDP socket sends to each VIP of argv[1:] in turn and reads its reply;
the reply sources in order, as JSON."""

from __future__ import annotations

import json
import socket
import sys

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
seen = []
for v in sys.argv[1:]:
    s.sendto(b"peer\n", (v, 53))
    data, src = s.recvfrom(200)
    seen.append(f"{src[0]}:{src[1]}")
print(json.dumps(seen))
