"""A TCP connect to port 80 and a UDP send to port 53 of every host argv[1:]:
the errno (0 if none) and how long each took, as JSON."""

from __future__ import annotations

import json
import socket
import sys
import time

out = []
for host in sys.argv[1:]:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
        s.settimeout(10)
        t = time.monotonic()
        try:
            if kind == socket.SOCK_STREAM:
                s.connect((host, 80))
            else:
                s.sendto(b"x", (host, 53))
            err = 0
        except OSError as e:
            err = e.errno or -1
        out.append([host, kind == socket.SOCK_STREAM, err, time.monotonic() - t])
        s.close()
print(json.dumps(out))
