"""Hold argv[3] TCP connections to argv[1]:argv[2]; print "held", then sleep 30 s."""

from __future__ import annotations

import socket
import sys
import time

socks = []
for _ in range(int(sys.argv[3])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect((sys.argv[1], int(sys.argv[2])))
    socks.append(s)
print("held", flush=True)
time.sleep(30)
