"""A TCP connect to port 80 of every host argv[1:]: prints "<host> <errno>"
(or "<host> connected?!")."""

from __future__ import annotations

import socket
import sys

for host in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(5)
    try:
        s.connect((host, 80))
        print(host, "connected?!")
    except OSError as e:
        print(host, e.errno)
