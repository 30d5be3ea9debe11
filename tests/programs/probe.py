"""Dial many (host, port, n) targets from one process (argv[1]: a JSON list):
per target, what served, what getpeername() said and which errors happened,
printed as one JSON list.  Standard library only (run with python -I)."""

from __future__ import annotations

import errno
import json
import socket
import sys
from typing import Dict, List


def main(argv: list[str]) -> None:
    out: List[Dict[str, List[str]]] = []
    for host, port, n in json.loads(argv[1]):
        r: Dict[str, List[str]] = {"served": [], "peers": [], "errors": []}
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect((host, port))
                p = s.getpeername()
                r["peers"].append(f"{p[0]}:{p[1]}")
                s.sendall(b"x\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
                r["served"].append(data.decode().split()[0] if data.split() else "")
            except OSError as e:
                r["errors"].append(errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
            finally:
                s.close()
        out.append(r)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)
