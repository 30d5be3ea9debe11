"""A client for lab pods: dials an address many times and reports, as JSON,
which backend answered, what ``getpeername()``/``recvfrom()`` showed and which
errors happened.  The counterpart of :mod:`socklb.testing.server`.

    python -m socklb.testing.client tcp 10.96.0.10 80 -n 100
    python -m socklb.testing.client udp fd00:96::a 53 -n 20            # one unconnected socket
    python -m socklb.testing.client udp 10.96.0.10 53 -n 20 --connected

Output: ``{"served": [name...], "peers": ["addr:port"...], "errors": ["ECONNREFUSED"...]}``.
Every operation has a timeout; the run is bounded by ``-n`` and ``--deadline``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "run_tcp", "run_udp"]

Result = Dict[str, List[str]]


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _fmt(addr: Tuple[object, ...]) -> str:
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def _err(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def _readline(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def run_tcp(host: str, port: int, n: int, timeout: float = 3.0, deadline: float = 60.0) -> Result:
    """``n`` short TCP connections: connect, getpeername, ask, read the name, close."""
    out: Result = {"served": [], "peers": [], "errors": [], "seen_as": []}
    end = time.monotonic() + deadline
    for _ in range(n):
        if time.monotonic() > end:
            out["errors"].append("deadline")
            break
        s = socket.socket(_family(host), socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            out["peers"].append(_fmt(s.getpeername()))
            s.sendall(b"peer\n")
            words = _readline(s).decode().split()
            if words:
                out["served"].append(words[0])
                out["seen_as"].append(" ".join(words[1:]))
            else:
                out["errors"].append("EOF")
        except OSError as e:
            out["errors"].append(_err(e))
        finally:
            s.close()
    return out


def run_udp(
    host: str,
    port: int,
    n: int,
    connected: bool = False,
    timeout: float = 2.0,
    deadline: float = 60.0,
    sockets: int = 1,
) -> Result:
    """``n`` request/replies on each of ``sockets`` UDP sockets (one after the
    other), connected or not.  ``peers`` holds the source each reply came from
    (``recvfrom``), or for a connected socket what ``getpeername()`` said."""
    out: Result = {"served": [], "peers": [], "errors": []}
    end = time.monotonic() + deadline
    for _ in range(sockets):
        one = _udp_socket(host, port, n, connected, timeout, end)
        for k in out:
            out[k].extend(one[k])
    return out


def _udp_socket(host: str, port: int, n: int, connected: bool, timeout: float, end: float) -> Result:
    out: Result = {"served": [], "peers": [], "errors": []}
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if connected:
            try:
                s.connect((host, port))
            except OSError as e:
                out["errors"].append(_err(e))
                return out
        for _ in range(n):
            if time.monotonic() > end:
                out["errors"].append("deadline")
                break
            try:
                if connected:
                    s.send(b"peer\n")
                    data, src = s.recvfrom(4096)
                    out["peers"].append(_fmt(s.getpeername()))
                else:
                    s.sendto(b"peer\n", (host, port))
                    data, src = s.recvfrom(4096)
                    out["peers"].append(_fmt(src))
                words = data.decode().split()
                out["served"].append(words[0] if words else "")
            except OSError as e:
                out["errors"].append(_err(e))
    finally:
        s.close()
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m socklb.testing.client")
    ap.add_argument("proto", choices=["tcp", "udp"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("-n", type=int, default=1)
    ap.add_argument("--connected", action="store_true", help="udp: connect() the socket first")
    ap.add_argument("--sockets", type=int, default=1, help="udp: use this many sockets, n requests each")
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--deadline", type=float, default=60.0)
    a = ap.parse_args(argv)
    # A slow machine (the kernel matrix under emulation) gets longer bounds.
    scale = max(1.0, float(os.environ.get("SOCKLB_LAB_TIMEOUT_SCALE") or 1))
    a.timeout, a.deadline = a.timeout * scale, a.deadline * scale
    if a.proto == "tcp":
        res = run_tcp(a.host, a.port, a.n, a.timeout, a.deadline)
    else:
        res = run_udp(a.host, a.port, a.n, a.connected, a.timeout, a.deadline, a.sockets)
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
