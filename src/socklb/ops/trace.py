"""Live translation events of a pinned balancer (``socklb trace``).

The datapath writes an event to the pinned ``trace_events`` ring buffer for
every translation, refusal and failed pick of ``connect()`` and unconnected
UDP ``sendmsg()`` - but only while a reader holds the lease in the pinned
``trace_ctl`` map: the time (``CLOCK_MONOTONIC``, what ``bpf_ktime_get_ns``
counts) until which tracing is on.  A :class:`Tracer` sets the lease, renews
it while it reads and clears it when it stops; a reader that is killed leaves
a lease that runs out within :data:`LEASE` seconds, and the datapath then
clears it: tracing never stays on without a reader.  Off, a translation pays
one array lookup and a compare.

It does not take the owner's lock: the owner keeps running.  It writes only
``trace_ctl``.  A ring buffer has one consumer, so one reader at a time: a
reader holds a ``flock`` on ``<pin_dir>/maps`` (not the owner's lock, which
is on ``<pin_dir>``); a second one is refused, naming the first one's pid.

Example::

    >>> from socklb.ops.trace import Tracer
    >>> with Tracer("/sys/fs/bpf/my-controller") as t:              # doctest: +SKIP
    ...     for ev in t.events(count=3):
    ...         print(ev.vip, "->", ev.backend, ev.outcome)
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from typing_extensions import Self

from socklb._native import abi, check, ffi, lib
from socklb._native.abi import TRACE_CTL as CTL
from socklb._native.abi import Record
from socklb.datapath import pins
from socklb.errors import InvalidValueError, NotFoundError, PermissionDeniedError, SocklbError

__all__ = ["Tracer", "TraceEvent", "TraceBusyError", "LEASE", "EVENT", "CTL"]


class TraceBusyError(SocklbError):
    """Another reader is tracing this balancer."""


LEASE = 2.0
"""Seconds a lease lasts; the reader renews it four times as often."""
EVENT = Record("struct socklb_trace_event")
_OUTCOMES = {
    lib.SOCKLB_TRACE_TRANSLATED: "translated",
    lib.SOCKLB_TRACE_NO_BACKEND: "no_backend",
    lib.SOCKLB_TRACE_REFUSED: "refused",
}
_HOOKS = {lib.SOCKLB_HOOK_CONNECT: "connect", lib.SOCKLB_HOOK_SENDMSG: "sendmsg"}
_BATCH = 4096


def _mono_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _hp(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True)
class TraceEvent:
    """One translation (or refusal) made by the datapath."""

    time: float
    """Unix time of the event."""
    hook: str
    """connect4, connect6, sendmsg4 or sendmsg6."""
    pid: int
    comm: str
    cgroup_id: int
    netns_cookie: int
    socket_cookie: int
    protocol: str
    vip: str
    vip_port: int
    backend: Optional[str]
    backend_port: Optional[int]
    backend_id: Optional[int]
    outcome: str
    """translated, no_backend (ECONNREFUSED: no usable backend) or refused
    (ECONNREFUSED: no socket state could be allocated)."""
    retried: bool
    """The pick was retried because the service's list changed under it."""

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def frontend(self) -> str:
        return _hp(self.vip, self.vip_port)


def decode(raw: bytes, mono_now: int, wall_now: float) -> TraceEvent:
    e = EVENT.unpack(raw)
    chosen = e.backend_id != 0
    return TraceEvent(
        time=wall_now - (mono_now - e.ts_ns) / 1e9,
        hook=_HOOKS.get(e.hook, str(e.hook)) + ("6" if e.v6 else "4"),
        pid=e.pid,
        comm=e.comm.split(b"\0", 1)[0].decode(errors="replace"),
        cgroup_id=e.cgroup_id,
        netns_cookie=e.netns_cookie,
        socket_cookie=e.cookie,
        protocol=abi.PROTO.member[e.proto].value if e.proto in abi.PROTO.member else str(e.proto),
        vip=abi.addr_text(e.vip),
        vip_port=socket.ntohs(e.vip_port),
        backend=abi.addr_text(e.backend) if chosen else None,
        backend_port=socket.ntohs(e.backend_port) if chosen else None,
        backend_id=e.backend_id if chosen else None,
        outcome=_OUTCOMES.get(e.outcome, str(e.outcome)),
        retried=bool(e.retried),
    )


class Tracer:
    """Reads the translation events of the balancer pinned in ``pin_dir``.

    A context manager; :meth:`close` clears the lease (unless another reader
    renewed it since) and closes the ring buffer."""

    def __init__(self, pin_dir: str, lease: float = LEASE) -> None:
        from socklb.ops.view import PinnedView

        PinnedView(pin_dir).close()  # the clear error if it is not a socklb pin directory
        self.pin_dir = os.path.realpath(pin_dir)
        self.lease = lease
        self._fds: List[int] = []
        self._rb: Optional[Any] = None
        self._ours = 0
        self._reader_lock: Optional[int] = None
        try:
            self._lock_reader()
            ctl_fd = self._open("trace_ctl")
            ev_fd = self._open("trace_events")
            self._ctl = _Ctl(ctl_fd)
            out = ffi.new("struct socklb_trace **")
            check(lib.socklb_trace_open(ev_fd, out), "opening the trace ring buffer")
            self._rb = out[0]
            self._buf = ffi.new("uint8_t[]", _BATCH * EVENT.size)
            self._lost = ffi.new("uint64_t *")
            self.lost = 0
            """Events read but dropped because a poll returned more than a batch."""
            self._dropped0 = self._ctl.read()[1]
            self.renew()
        except BaseException:
            self.close()
            raise

    def _lock_reader(self) -> None:
        maps = os.path.join(self.pin_dir, "maps")
        fd = os.open(maps, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                pid = pins.holder_pid(maps)
                raise TraceBusyError(
                    f"another reader{f' (pid {pid})' if pid else ''} is tracing {self.pin_dir}: "
                    "a ring buffer has one consumer"
                ) from None
            raise
        self._reader_lock = fd

    def _open(self, name: str) -> int:
        path = os.path.join(self.pin_dir, "maps", name)
        if name not in pins.MAP_NAMES or not os.path.exists(path):
            raise InvalidValueError("pin_dir", f"{self.pin_dir} has no {name} map: its datapath cannot trace")
        fd = int(lib.socklb_obj_get(os.fsencode(path), 0))
        if fd in (-errno.EACCES, -errno.EPERM):
            raise PermissionDeniedError(f"opening {path}", -fd)
        fd = check(fd, f"opening {path}")
        self._fds.append(fd)
        return fd

    @property
    def dropped(self) -> int:
        """Events the datapath could not write (ring buffer full) since this reader started."""
        return self._ctl.read()[1] - self._dropped0

    def renew(self) -> None:
        """Hold the lease for :attr:`lease` seconds from now."""
        until = _mono_ns() + int(self.lease * 1e9)
        self._ctl.set_lease(max(until, self._ctl.read()[0]))
        self._ours = until
        self._renewed = time.monotonic()

    def poll(self, timeout: float = 0.1) -> List[TraceEvent]:
        """The events that arrive within ``timeout`` seconds (renewing the lease as needed)."""
        if self._rb is None:
            raise NotFoundError("the tracer is closed")
        if time.monotonic() - self._renewed > self.lease / 4:
            self.renew()
        n = check(
            int(lib.socklb_trace_poll(self._rb, self._buf, _BATCH, int(timeout * 1000), self._lost)), "reading events"
        )
        self.lost += int(self._lost[0])
        raw = bytes(ffi.buffer(self._buf, n * EVENT.size))
        mono, wall = _mono_ns(), time.time()
        return [decode(raw[i * EVENT.size : (i + 1) * EVENT.size], mono, wall) for i in range(n)]

    def events(
        self,
        count: Optional[int] = None,
        frontend: Optional[Tuple[str, Optional[int]]] = None,
        cgroup_id: Optional[int] = None,
        timeout: Optional[float] = None,
        stop: Optional[threading.Event] = None,
    ) -> Iterator[TraceEvent]:
        """Events as they come, filtered by frontend ``(vip, port or None)``
        and cgroup id; stops after ``count`` events, ``timeout`` seconds, or
        once ``stop`` is set."""
        end = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while (count is None or seen < count) and not (stop is not None and stop.is_set()):
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            if left <= 0:
                return
            for ev in self.poll(left):
                if frontend is not None and (
                    ev.vip != frontend[0] or (frontend[1] is not None and ev.vip_port != frontend[1])
                ):
                    continue
                if cgroup_id is not None and ev.cgroup_id != cgroup_id:
                    continue
                yield ev
                seen += 1
                if count is not None and seen >= count:
                    return

    def close(self) -> None:
        rb, self._rb = self._rb, None
        if rb is not None:
            try:
                lease, _ = self._ctl.read()
                if lease == self._ours:  # no other reader renewed it since: off now
                    self._ctl.set_lease(0)
            except OSError:
                pass
            lib.socklb_trace_close(rb)
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        lock, self._reader_lock = self._reader_lock, None
        if lock is not None:
            os.close(lock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Ctl:
    """The trace_ctl array (one record)."""

    def __init__(self, fd: int) -> None:
        from socklb.datapath.live import Map

        self._map = Map(None, "trace_ctl", fd, 4, CTL.size)

    def read(self) -> Tuple[int, int]:
        raw = self._map.lookup(b"\0\0\0\0")
        c = CTL.unpack(raw) if raw is not None else CTL.unpack(b"\0" * CTL.size)
        return int(c.lease_until_ns), int(c.dropped)

    def set_lease(self, until_ns: int) -> None:
        _, dropped = self.read()
        self._map.update(b"\0\0\0\0", CTL.pack(lease_until_ns=until_ns, dropped=dropped), 1)


def lease_state(pin_dir: str) -> Tuple[int, int]:
    """(lease_until_ns, now in the same clock) of a pin directory's trace_ctl (tests, status)."""
    path = os.path.join(pin_dir, "maps", "trace_ctl")
    fd = check(int(lib.socklb_obj_get(os.fsencode(path), 1)), f"opening {path}")
    try:
        return _Ctl(fd).read()[0], _mono_ns()
    finally:
        os.close(fd)
