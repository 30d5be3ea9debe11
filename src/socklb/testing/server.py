"""A tiny identity server for lab backends: it answers every request with its name.

Run it as::

    python -m socklb.testing.server --name b1 --tcp 8080 --udp 5353

or, without importing the ``socklb`` package (it only needs the standard
library), as ``python path/to/labserver.py ...``.  It binds the dual-stack
wildcard ``::`` (``IPV6_V6ONLY=0``, ``SO_REUSEADDR``) on every port given, so
it serves IPv4 and IPv6 alike, prints ``ready`` on stdout once every socket is
listening, and exits with status 0 on SIGTERM or SIGINT.

Protocol (TCP and UDP alike):

* a request ``peer`` (optionally followed by a newline) gets
  ``NAME <peer-ip> <peer-port>\\n`` - the client's address as the server saw it,
  with the ``::ffff:`` prefix of IPv4-mapped addresses removed;
* anything else gets ``NAME\\n``.

A TCP connection is answered as soon as a newline arrives, when the client
shuts down its sending side, or, if it sends nothing, after ``--wait`` seconds
(0.25 by default); then the server closes the connection.  UDP replies are
sent from the address the datagram was sent to (found with
``IPV6_RECVPKTINFO``), so a client that sent to one of the pod's addresses
gets the answer from that address.

Example::

    $ python -m socklb.testing.server --name b1 --tcp 8080 --udp 8080 &
    ready
    $ printf 'peer\\n' | nc -q1 127.0.0.1 8080
    b1 127.0.0.1 50312

It is a single-threaded ``selectors`` (epoll) loop that handles thousands of
short connections per second.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Optional, Union

__all__ = ["LabServer", "main"]

_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)

_MAX_REQUEST = 1024
_ACCEPT_BATCH = 256
_UDP_BATCH = 256


def _plain_ip(host: str) -> str:
    """Strip the ``::ffff:`` prefix of an IPv4-mapped IPv6 address and any ``%scope``."""
    host = host.split("%", 1)[0]
    if host.lower().startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def _reply(name: str, request: bytes, peer: tuple[str, int]) -> bytes:
    line = request.split(b"\n", 1)[0].strip()
    if line == b"peer":
        return f"{name} {_plain_ip(peer[0])} {peer[1]}\n".encode()
    return f"{name}\n".encode()


class _Conn:
    __slots__ = ("buf", "deadline", "open", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: tuple[str, int], deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = b""
        self.deadline = deadline
        self.open = True


_Key = Union[tuple[str, socket.socket], tuple[str, _Conn], tuple[str, None]]


class LabServer:
    """The server object behind the command line; usable in-process too.

    Example::

        >>> srv = LabServer("b1", tcp=[8080], udp=[8080])   # doctest: +SKIP
        >>> srv.bind()                                       # doctest: +SKIP
        >>> srv.serve_forever()    # until stop() or SIGTERM   # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        tcp: Sequence[int] = (),
        udp: Sequence[int] = (),
        wait: float = 0.25,
        host: str = "::",
    ) -> None:
        self.name = name
        self.tcp_ports = list(tcp)
        self.udp_ports = list(udp)
        self.wait = wait
        self.host = host
        self._sel = selectors.DefaultSelector()
        self._sockets: list[socket.socket] = []
        self._pending: collections.deque[_Conn] = collections.deque()
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    # -- setup -------------------------------------------------------------

    def _socket(self, kind: int, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            s = socket.socket(family, kind)
        except OSError as e:
            if family != socket.AF_INET6 or e.errno != errno.EAFNOSUPPORT or self.host != "::":
                raise
            family = socket.AF_INET
            s = socket.socket(family, kind)
        host = self.host if family == socket.AF_INET6 else ("0.0.0.0" if self.host == "::" else self.host)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                if kind == socket.SOCK_DGRAM:
                    s.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
            elif kind == socket.SOCK_DGRAM:
                s.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            s.bind((host, port))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def bind(self) -> None:
        """Create, bind and (for TCP) listen on every socket."""
        for port in self.tcp_ports:
            s = self._socket(socket.SOCK_STREAM, port)
            self._sockets.append(s)
            s.listen(4096)
            self._sel.register(s, selectors.EVENT_READ, ("accept", s))
        for port in self.udp_ports:
            s = self._socket(socket.SOCK_DGRAM, port)
            self._sockets.append(s)
            self._sel.register(s, selectors.EVENT_READ, ("udp", s))

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from signal handlers)."""
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        """Close every socket."""
        for conn in list(self._pending):
            self._close(conn)
        self._pending.clear()
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- TCP ---------------------------------------------------------------

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: answer the oldest waiting clients now.
                    for _ in range(min(len(self._pending), 64)):
                        self._respond(self._pending[0])
                        self._pending.popleft()
                return
            sock.setblocking(False)
            conn = _Conn(sock, (str(addr[0]), int(addr[1])), time.monotonic() + self.wait)
            self._pending.append(conn)
            self._sel.register(sock, selectors.EVENT_READ, ("conn", conn))
            self._read(conn)

    def _read(self, conn: _Conn) -> None:
        if not conn.open:
            return
        try:
            data = conn.sock.recv(_MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._respond(conn)
            return
        conn.buf += data
        if b"\n" in conn.buf or len(conn.buf) >= _MAX_REQUEST:
            self._respond(conn)

    def _respond(self, conn: _Conn) -> None:
        if not conn.open:
            return
        try:
            conn.sock.send(_reply(self.name, conn.buf, conn.peer))
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if not conn.open:
            return
        conn.open = False
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _expire(self, now: float) -> None:
        while self._pending:
            conn = self._pending[0]
            if conn.open and conn.deadline > now:
                return
            self._pending.popleft()
            self._respond(conn)

    # -- UDP ---------------------------------------------------------------

    def _udp(self, s: socket.socket) -> None:
        anc_size = socket.CMSG_SPACE(32)
        for _ in range(_UDP_BATCH):
            try:
                data, anc, _flags, addr = s.recvmsg(65535, anc_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. a queued ICMP error for an earlier reply: keep serving.
                continue
            reply_anc: list[tuple[int, int, bytes]] = []
            for level, kind, payload in anc:
                if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(payload) >= 16:
                    # in6_pktinfo: reply from the same address, let routing pick the interface
                    reply_anc = [(level, kind, payload[:16] + struct.pack("=I", 0))]
                elif level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(payload) >= 12:
                    # in_pktinfo {ifindex, spec_dst, addr}: source = original destination
                    reply_anc = [(level, kind, struct.pack("=I", 0) + payload[8:12] + b"\0\0\0\0")]
            peer = (str(addr[0]), int(addr[1]))
            try:
                s.sendmsg([_reply(self.name, data, peer)], reply_anc, 0, addr)
            except OSError:
                pass

    # -- loop --------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` is called."""
        while not self._stop:
            timeout: Optional[float] = None
            if self._pending:
                timeout = max(0.0, self._pending[0].deadline - time.monotonic())
            events = self._sel.select(timeout)
            for key, _mask in events:
                data: _Key = key.data
                kind, obj = data
                if kind == "conn" and isinstance(obj, _Conn):
                    self._read(obj)
                elif kind == "accept" and isinstance(obj, socket.socket):
                    self._accept(obj)
                elif kind == "udp" and isinstance(obj, socket.socket):
                    self._udp(obj)
                elif kind == "wake":
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except OSError:
                        pass
            self._expire(time.monotonic())


def _raise_nofile() -> None:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        want = min(want, 1 << 20)
        if soft == resource.RLIM_INFINITY or soft >= want:
            return
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status.

    Example::

        >>> main(["--name", "b1", "--tcp", "8080"])   # serves until SIGTERM  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(prog="python -m socklb.testing.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the name to answer with")
    parser.add_argument("--tcp", type=_port, action="append", default=[], metavar="PORT", help="TCP port (repeatable)")
    parser.add_argument("--udp", type=_port, action="append", default=[], metavar="PORT", help="UDP port (repeatable)")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="how long a TCP connection may stay silent before it is answered (default 0.25)",
    )
    parser.add_argument("--host", default="::", help="address to bind (default :: - all, dual-stack)")
    args = parser.parse_args(argv)
    if not args.tcp and not args.udp:
        parser.error("give at least one --tcp or --udp port")

    _raise_nofile()
    # A slow machine (the kernel matrix under emulation) waits longer.
    wait = args.wait * max(1.0, float(os.environ.get("SOCKLB_LAB_TIMEOUT_SCALE") or 1))
    server = LabServer(args.name, tcp=args.tcp, udp=args.udp, wait=wait, host=args.host)

    def on_signal(_signo: int, _frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        try:
            server.bind()
        except OSError as e:
            print(f"labserver: cannot bind: {e}", file=sys.stderr, flush=True)
            return 1
        try:
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        except OSError:
            pass
        server.serve_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
