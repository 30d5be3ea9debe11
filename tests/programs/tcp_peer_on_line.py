"""Hold a TCP connection to argv[1]:80; print its peer as JSON, and again after
a line on stdin."""

from __future__ import annotations

import json
import socket
import sys

s = socket.create_connection((sys.argv[1], 80), timeout=5)
print(json.dumps(s.getpeername()[:2]), flush=True)
sys.stdin.readline()
print(json.dumps(s.getpeername()[:2]), flush=True)
