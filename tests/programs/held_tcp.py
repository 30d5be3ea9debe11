"""Hold a TCP connection to argv[1]:argv[2] (MPTCP if argv[3] is "mptcp");
print "connected", then on a line on stdin check it: print "alive", "eof" or
"error <errno>"."""

from __future__ import annotations

import socket
import sys

proto = 262 if sys.argv[3:] == ["mptcp"] else 0  # IPPROTO_MPTCP
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM, proto)
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"peer\n")
    data = s.recv(100)
    print("alive" if data else "eof", flush=True)
except OSError as e:
    print("error", e.errno, flush=True)
