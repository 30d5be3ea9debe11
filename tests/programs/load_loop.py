"""A connect loop for a lab pod: connect, getpeername, request, read the name,
close; until a stop file appears (or a count or time limit).  Prints "started",
then one JSON summary.  Standard library only (run with python -I), so it
starts fast.

argv: host port stop_file max_connections max_seconds"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
import time
from typing import Any, Dict


def main(argv: list[str]) -> None:
    host, port, stop, max_n, max_s = argv[1], int(argv[2]), argv[3], int(argv[4]), float(argv[5])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    vip = ipaddress.ip_address(host)
    errors: Dict[str, int] = {}
    served: Dict[str, int] = {}
    res: Dict[str, Any] = {
        "attempted": 0,
        "failed": 0,
        "errors": errors,
        "served": served,
        "stopped_by": "count",
        "seconds": 0.0,
    }

    def fail(what: str) -> None:
        res["failed"] += 1
        errors[what] = errors.get(what, 0) + 1

    print("started", flush=True)
    t0 = time.monotonic()
    end = t0 + max_s
    while res["attempted"] < max_n:
        if os.path.exists(stop):
            res["stopped_by"] = "stop"
            break
        if time.monotonic() > end:
            res["stopped_by"] = "deadline"
            break
        res["attempted"] += 1
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect((host, port))
            peer = s.getpeername()
            if ipaddress.ip_address(peer[0]) != vip or peer[1] != port:
                fail(f"peer {peer[0]}:{peer[1]}")
                continue
            s.sendall(b"x\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            words = data.split()
            if not words:
                fail("EOF")
                continue
            name = words[0].decode()
            served[name] = served.get(name, 0) + 1
        except OSError as e:
            fail(errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
        finally:
            s.close()
    res["seconds"] = time.monotonic() - t0
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv)
