"""argv[2] TCP connects to argv[1], ports 80 and 81 in turn, each asking for a
line: prints the set of answers and the connections per second."""

from __future__ import annotations

import socket
import sys
import time

host, n = sys.argv[1], int(sys.argv[2])
t = time.monotonic()
names = set()
for i in range(n):
    s = socket.create_connection((host, 80 + i % 2), timeout=5)
    s.sendall(b"x\n")
    names.add(s.recv(100))
    s.close()
print(names, n / (time.monotonic() - t))
