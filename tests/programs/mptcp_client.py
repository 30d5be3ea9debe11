"""argv[3] MPTCP connections to argv[1]:argv[2]: who served, the peers and the
sockets' protocol, as JSON."""

from __future__ import annotations

import json
import socket
import sys
from typing import Dict, List

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out: Dict[str, List[object]] = {"served": [], "peers": [], "protocol": []}
for _ in range(n):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, 262)
    s.settimeout(3)
    s.connect((host, port))
    out["protocol"].append(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
    out["peers"].append(list(s.getpeername()[:2]))
    s.sendall(b"peer\n")
    out["served"].append(s.recv(100).decode().split()[0])
    s.close()
print(json.dumps(out))
