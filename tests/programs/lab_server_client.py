"""Talk to socklb.testing.server at argv[1]:argv[2] over TCP and UDP (hello,
peer, silent); what it answered and from where, as JSON."""

from __future__ import annotations

import json
import socket
import sys
from typing import Any, Dict

host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
out: Dict[str, Any] = {}
s = socket.create_connection((host, port), timeout=5)
s.sendall(b"hello\n")
out["tcp"] = s.recv(200).decode()
s.close()
s = socket.create_connection((host, port), timeout=5)
s.sendall(b"peer\n")
out["tcp_peer"] = s.recv(200).decode()
out["tcp_local"] = list(s.getsockname()[:2])
s.close()
s = socket.create_connection((host, port), timeout=5)  # sends nothing
out["tcp_silent"] = s.recv(200).decode()
s.close()
u = socket.socket(fam, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"hello", (host, port))
data, src = u.recvfrom(200)
out["udp"], out["udp_src"] = data.decode(), list(src[:2])
u.sendto(b"peer\n", (host, port))
data, src = u.recvfrom(200)
out["udp_peer"], out["udp_local"] = data.decode(), list(u.getsockname()[:2])
print(json.dumps(out))
