"""Hold argv[2] UDP sockets connected to argv[1]:53; print "open" and wait for
a line on stdin."""

from __future__ import annotations

import socket
import sys

socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((sys.argv[1], 53))
    socks.append(s)
print("open", flush=True)
sys.stdin.readline()
