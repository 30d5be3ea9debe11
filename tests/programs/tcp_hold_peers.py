"""Hold argv[2] TCP connections to argv[1]:80; print the set of their peers as
JSON, again after a line on stdin, then wait for another line."""

from __future__ import annotations

import json
import socket
import sys

socks = [socket.create_connection((sys.argv[1], 80), timeout=5) for _ in range(int(sys.argv[2]))]
print(json.dumps(sorted({"{}:{}".format(*s.getpeername()[:2]) for s in socks})), flush=True)
sys.stdin.readline()
print(json.dumps(sorted({"{}:{}".format(*s.getpeername()[:2]) for s in socks})), flush=True)
sys.stdin.readline()
