"""Bind a TCP socket to port argv[1] on each address argv[2:]; print
"<address> <errno>" per address (0 when the bind succeeds)."""

from __future__ import annotations

import socket
import sys

port = int(sys.argv[1])
for a in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((a, port))
        print(a, 0)
    except OSError as e:
        print(a, e.errno)
    s.close()
