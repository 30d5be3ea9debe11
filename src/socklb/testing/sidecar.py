"""A toy sidecar proxy for lab pods, the way Istio's and Linkerd's work: an
iptables ``nat OUTPUT REDIRECT`` rule in the pod sends every outgoing TCP
connection to it, it reads where the application meant to go with
``getsockopt(SOL_IP, SO_ORIGINAL_DST)``, picks an upstream itself (its own
table of services, as a mesh's control plane would give it, else the
original destination) and relays.  Before the upstream's bytes it sends one
line to the client, ``via-sidecar orig=<addr:port> upstream=<addr:port>``,
so a test can see what the sidecar saw.

    python -m socklb.testing.sidecar 15001 --route 10.96.0.10:80=10.244.2.2:8080

:func:`install_redirect` writes the rules (run inside the pod's namespace):
the sidecar's own connections carry the mark ``SIDECAR_MARK`` and are left
alone, as a mesh exempts its proxy's user.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["SIDECAR_MARK", "SO_ORIGINAL_DST", "install_redirect", "main", "original_dst"]

SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>, at level SOL_IP
SIDECAR_MARK = 1337
Addr = Tuple[str, int]


def original_dst(conn: socket.socket) -> Addr:
    """Where a REDIRECTed IPv4 connection was going before the nat rule."""
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


def redirect_rules(port: int) -> List[List[str]]:
    """The iptables commands that send the pod's outgoing TCP to ``port``."""
    base = ["iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp"]
    return [
        [*base, "-m", "mark", "--mark", str(SIDECAR_MARK), "-j", "RETURN"],
        [*base, "-o", "lo", "-j", "RETURN"],
        [*base, "-j", "REDIRECT", "--to-ports", str(port)],
    ]


def install_redirect(port: int) -> None:
    """Write the rules of :func:`redirect_rules` in this network namespace."""
    for argv in redirect_rules(port):
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def _parse(text: str) -> Addr:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(conn: socket.socket, routes: Dict[Addr, List[Addr]]) -> None:
    with conn:
        try:
            orig = original_dst(conn)
            upstream = random.choice(routes[orig]) if orig in routes else orig
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SIDECAR_MARK)
            up.settimeout(10)
            up.connect(upstream)
        except OSError as e:
            conn.sendall(f"sidecar-error {e.strerror}\n".encode())
            return
        with up:
            conn.sendall(f"via-sidecar orig={orig[0]}:{orig[1]} upstream={upstream[0]}:{upstream[1]}\n".encode())
            t = threading.Thread(target=_pipe, args=(up, conn), daemon=True)
            t.start()
            _pipe(conn, up)
            t.join(30)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m socklb.testing.sidecar", description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int, help="where the REDIRECT rule sends connections")
    ap.add_argument("--route", action="append", default=[], help="VIP:PORT=BACKEND:PORT[,BACKEND:PORT...]")
    ap.add_argument("--install", action="store_true", help="write the iptables REDIRECT rules first")
    args = ap.parse_args(argv)
    routes: Dict[Addr, List[Addr]] = {}
    for r in args.route:
        vip, _, backends = r.partition("=")
        routes[_parse(vip)] = [_parse(b) for b in backends.split(",")]
    if args.install:
        install_redirect(args.port)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", args.port))
    srv.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve, args=(conn, routes), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
