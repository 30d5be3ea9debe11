"""One UDP socket connected in turn to argv[1]:53, argv[2]:53 and
argv[3]:argv[4], five rounds; per send: the host, who answered, the reply's
source and the peer, as JSON."""

from __future__ import annotations

import json
import socket
import sys

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
out = []
for _ in range(5):
    for host, port in ((sys.argv[1], 53), (sys.argv[2], 53), (sys.argv[3], int(sys.argv[4]))):
        s.connect((host, port))
        s.send(b"peer\n")
        data, src = s.recvfrom(100)
        out.append([host, data.decode().split()[0], src[0], s.getpeername()[0]])
print(json.dumps(out))
