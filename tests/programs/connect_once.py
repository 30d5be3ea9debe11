"""One TCP connect to argv[1]:argv[2]: prints "ok <local address>" or
"error <errno>"."""

from __future__ import annotations

import socket
import sys

s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("ok", s.getsockname()[0])
except OSError as e:
    print("error", e.errno)
