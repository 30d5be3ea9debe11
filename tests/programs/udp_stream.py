"""A connected UDP client of argv[1]:argv[2] that sends and reads for 30 s,
reconnecting after an error: one JSON line per exchange (who served and the
peer, or the error)."""

from __future__ import annotations

import errno
import json
import socket
import sys
import time

vip, port = sys.argv[1], int(sys.argv[2])


def connect() -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.connect((vip, port))
    return s


s = connect()
end = time.monotonic() + 30
while time.monotonic() < end:
    try:
        s.send(b"peer\n")
        data = s.recv(100)
        print(json.dumps({"served": data.decode().split()[0], "peer": s.getpeername()[0]}), flush=True)
        time.sleep(0.02)
    except OSError as e:
        print(json.dumps({"error": errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout"}), flush=True)
        s.close()
        s = connect()
