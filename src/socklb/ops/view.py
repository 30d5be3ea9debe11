"""Read-only inspection of a pinned balancer, from any process.

:class:`PinnedView` opens the maps another process pinned (``Balancer(pin_dir=...)``)
with ``BPF_F_RDONLY`` file descriptors, takes no lock and writes nothing: the
owner keeps its lock and its maps are unchanged, byte for byte.  It decodes
what the kernel serves (the services, their backends and ids), the datapath
counters, the per-backend selection counts, how full each map is, and which
cgroups the pinned links attach to.  ``socklb status|services|stats`` print
these; :mod:`socklb.ops.metrics` exports them.

Example::

    >>> from socklb.ops.view import PinnedView
    >>> with PinnedView("/sys/fs/bpf/my-controller") as v:     # doctest: +SKIP
    ...     [str(s) for s in v.services()]
    ['10.96.0.10:80/tcp']
"""

from __future__ import annotations

import errno
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from typing_extensions import Self

from socklb._native import check, features, ffi, lib
from socklb._native.abi import ATTACH_INFO, TRACE_CTL, U64
from socklb.control import adopt, stats
from socklb.control.terminate import client_netns
from socklb.control.writer import Tables
from socklb.datapath import pins
from socklb.datapath.live import Map
from socklb.datapath.spec import MAX_ATTACHMENTS, DatapathSpec, PinPaths
from socklb.errors import InvalidValueError, KernelError, NotFoundError, PermissionDeniedError
from socklb.model import Service

__all__ = ["PinnedView", "BackendView", "ServiceView", "LinkView", "parse_frontend"]

# bpf_map_type values of maps whose keys the syscall cannot walk (socket-local storage).
_BPF_MAP_TYPE_SK_STORAGE = 24
_BPF_MAP_TYPE_ARRAY = 2
_BPF_MAP_TYPE_PERCPU_ARRAY = 6
_MAP_TYPES = {1: "hash", 2: "array", 5: "percpu_hash", 6: "percpu_array", 9: "lru_hash", 10: "lru_percpu_hash"}
_MAP_TYPES[24] = "sk_storage"
_MAP_TYPES[27] = "ringbuf"


@dataclass(frozen=True)
class BackendView:
    id: int
    address: str
    port: int
    weight: int
    state: str
    selections: Optional[int]
    """Times the datapath chose it (None: the pins have no selection counters)."""


@dataclass(frozen=True)
class ServiceView:
    service: Service
    backends: Tuple[BackendView, ...]

    def to_json(self) -> Dict[str, Any]:
        s = self.service
        return {
            "address": s.address,
            "port": s.port,
            "protocol": s.protocol.value,
            "algorithm": s.algorithm.value,
            "affinity": {"timeout": s.affinity.timeout} if s.affinity else None,
            "terminate_tcp": s.terminate_tcp,
            "frontend": s.frontend.value,
            "backends": [
                {
                    "id": b.id,
                    "address": b.address,
                    "port": b.port,
                    "weight": b.weight,
                    "state": b.state,
                    "selections": b.selections,
                }
                for b in self.backends
            ],
        }


@dataclass(frozen=True)
class LinkView:
    cgroup_id: int
    cgroup: Optional[str]
    """The cgroup's path as the owner recorded it, None if unknown."""
    programs: Dict[str, int] = field(default_factory=dict)
    """Program name -> id of the program the pinned link runs."""


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def parse_frontend(text: str) -> Tuple[str, Optional[int]]:
    """``VIP``, ``VIP:PORT``, ``[V6]:PORT`` or ``V6`` -> (address, port or None).

    >>> parse_frontend("10.96.0.10:80"), parse_frontend("[fd00::a]:53"), parse_frontend("fd00::a")
    (('10.96.0.10', 80), ('fd00::a', 53), ('fd00::a', None))
    """
    t = text.strip()
    addr, port = t, None
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidValueError("service", f"not VIP[:PORT]: {text!r}")
        addr, port_s = host, rest[1:] if rest else ""
        port = int(port_s) if port_s.isdigit() else None
        if rest and port is None:
            raise InvalidValueError("service", f"not VIP[:PORT]: {text!r}")
    elif t.count(":") == 1:
        addr, port_s = t.split(":")
        if not port_s.isdigit():
            raise InvalidValueError("service", f"not VIP[:PORT]: {text!r}")
        port = int(port_s)
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(fam, socket.inet_pton(fam, addr)), port
        except OSError:
            continue
    raise InvalidValueError("service", f"not an IP address: {addr!r}")


class PinnedView:
    """A read-only view of the balancer pinned in ``pin_dir``.

    Raises :class:`~socklb.errors.NotFoundError` when ``pin_dir`` does not exist,
    :class:`~socklb.errors.InvalidValueError` when it is not a socklb pin
    directory and :class:`~socklb.errors.IncompatiblePinsError` for another
    layout version.  A context manager; :meth:`close` closes the fds."""

    def __init__(self, pin_dir: str) -> None:
        self._fds: List[int] = []
        real = os.path.realpath(pin_dir)
        try:
            # Not os.path.exists: it says False for a directory this user may
            # not reach (/sys/fs/bpf is root's, mode 0700), which exists.
            os.stat(real)
        except FileNotFoundError:
            raise NotFoundError(f"{pin_dir}: no such pin directory") from None
        except PermissionError as e:
            raise PermissionDeniedError(
                f"reaching {pin_dir} (pin directories are root's, mode 0700)", e.errno or errno.EACCES
            ) from None
        if not os.path.isdir(real):
            raise InvalidValueError("pin_dir", f"{pin_dir} is not a directory")
        try:
            on_bpffs = pins.is_bpffs(real)
        except KernelError as e:
            raise InvalidValueError("pin_dir", f"{pin_dir}: {e}") from None
        if not on_bpffs:
            raise InvalidValueError("pin_dir", f"{pin_dir} is not on a bpf filesystem: not a socklb pin directory")
        self.paths = PinPaths(real)
        if not os.access(real, os.R_OK | os.X_OK):
            raise PermissionDeniedError(f"reading {pin_dir} (pin directories are root's, mode 0700)", errno.EACCES)
        if not os.path.exists(self.paths.meta):
            raise InvalidValueError("pin_dir", f"{pin_dir} is not a socklb pin directory (no maps/meta)")
        try:
            spec = adopt.read_meta(self.paths)
        except KernelError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                raise PermissionDeniedError(f"reading {self.paths.meta}", e.errno) from None
            raise InvalidValueError("pin_dir", f"{pin_dir} is not a socklb pin directory ({e})") from None
        assert spec is not None
        self.spec: DatapathSpec = spec
        self.maps: Dict[str, Map] = {}
        self.map_types: Dict[str, int] = {}
        self.max_entries: Dict[str, int] = {}
        try:
            for name in sorted(os.listdir(self.paths.maps)):
                if name in pins.MAP_NAMES:
                    self._open_map(name)
        except BaseException:
            self.close()
            raise

    def _open_map(self, name: str) -> None:
        path = os.path.join(self.paths.maps, name)
        fd = lib.socklb_obj_get(os.fsencode(path), 1)
        if fd in (-errno.EACCES, -errno.EPERM):
            raise PermissionDeniedError(f"opening {path}", -fd)
        fd = check(fd, f"opening {path}")
        self._fds.append(fd)
        t, k, v, m = (ffi.new("uint32_t *") for _ in range(4))
        check(lib.socklb_map_info(fd, t, k, v, m), f"map info of {path}")
        self.maps[name] = Map(None, name, fd, int(k[0]), int(v[0]))
        self.map_types[name] = int(t[0])
        self.max_entries[name] = int(m[0])

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _map(self, name: str) -> Map:
        m = self.maps.get(name)
        if m is None:
            raise InvalidValueError(
                "pin_dir", f"{self.paths.root} has no map {name}: not a complete socklb pin directory"
            )
        return m

    # -- what is programmed ---------------------------------------------------

    def tables(self) -> Tables:
        return Tables(
            services=self._map("services"),
            slots=self._map("slots"),
            backends=self._map("backends"),
            maglev=self._map("maglev"),
            affinity=self._map("affinity"),
        )

    def services(self) -> List[Service]:
        return adopt.read_services(self.tables(), self.spec)

    def selections(self) -> Optional[Dict[int, int]]:
        """Backend id -> times chosen, summed over CPUs; None when the pins
        have no selection counters."""
        m = self.maps.get("selections")
        if m is None:
            return None
        return stats.read_selections(m, self.max_entries["selections"])

    def service_views(self, frontend: Optional[Tuple[str, Optional[int]]] = None) -> List[ServiceView]:
        """Every service (or those of one ``(address, port)`` frontend) with
        its backends' ids and selection counts, sorted by address and port."""
        sel = self.selections()
        out = []
        for svc, ids in adopt.read_programmed(self.tables(), self.spec):
            if frontend is not None and (
                svc.address != frontend[0] or (frontend[1] is not None and svc.port != frontend[1])
            ):
                continue
            bvs = []
            for b in svc.backends:
                bid = ids[(b.address, b.port)]
                bvs.append(
                    BackendView(
                        bid, b.address, b.port, b.weight, b.state.value, None if sel is None else sel.get(bid, 0)
                    )
                )
            out.append(ServiceView(svc, tuple(bvs)))
        out.sort(
            key=lambda v: (
                ":" in v.service.address,
                socket.inet_pton(_fam(v.service.address), v.service.address),
                v.service.port,
                v.service.protocol.value,
            )
        )
        return out

    # -- counters -------------------------------------------------------------

    def counters(self) -> Dict[str, int]:
        """Datapath counters (translations, refusals, retries, ...) summed over CPUs."""
        return stats.read_counters(self._map("counters"))

    def socket_states(self) -> int:
        """Live per-socket states (sockets socklb connected or translated), in the
        network namespaces of the processes in the attached cgroups: the same
        count as :meth:`Balancer.socket_states`, from another process."""
        fds = client_netns([lv.cgroup for lv in self.links() if lv.cgroup])
        try:
            if not fds:
                return 0
            conn, dgram, tcp = self._map("sock_conn").fd, self._map("sock_dgram").fd, self._map("sock_tcp").fd
            n = int(lib.socklb_count_pinned_states(conn, dgram, tcp, ffi.new("int[]", fds), len(fds)))
            if n < 0 and features.lacks(features.ITER_STORAGE):
                raise features.ITER_STORAGE.error(os.strerror(-n))
            if n == -errno.EOPNOTSUPP:  # built without the iterators
                raise features.SOCK_DESTROY.error(os.strerror(-n))
            return check(n, "counting socket states")
        finally:
            for fd in fds:
                os.close(fd)

    # -- status ---------------------------------------------------------------

    def owner_pid(self) -> Optional[int]:
        return pins.holder_pid(self.paths.root)

    def map_usage(self) -> Dict[str, Tuple[Optional[int], int]]:
        """Map name -> (entries now, max_entries); entries None where the
        kernel cannot walk the map (socket-local storage, ring buffers)."""
        out: Dict[str, Tuple[Optional[int], int]] = {}
        for name, m in sorted(self.maps.items()):
            t, cap = self.map_types[name], self.max_entries[name]
            n: Optional[int]
            if name == "sock_tcp":  # slots held by a socket
                n = check(int(lib.socklb_tcp_slots_used(m.fd)), "reading sock_tcp")
            elif t in (_BPF_MAP_TYPE_ARRAY, _BPF_MAP_TYPE_PERCPU_ARRAY):
                n = cap
            elif t in _MAP_TYPES and t not in (_BPF_MAP_TYPE_SK_STORAGE, 27):
                n = len(m.keys(cap))
            else:
                n = None
            out[name] = (n, cap)
        return out

    def links(self) -> List[LinkView]:
        """The pinned links, by cgroup, with the program id each runs."""
        rec = self.maps.get("attachments")
        recorded = (
            {
                U64.unpack(k)[0]: os.fsdecode(ATTACH_INFO.unpack(v).path.rstrip(b"\0"))
                for k, v in rec.items(MAX_ATTACHMENTS)
            }
            if rec is not None
            else {}
        )
        out = []
        try:
            names = sorted(os.listdir(self.paths.links), key=lambda n: (not n.isdigit(), n))
        except FileNotFoundError:
            names = []
        for name in names:
            if not (name.isascii() and name.isdigit()):
                continue
            d = os.path.join(self.paths.links, name)
            progs = {}
            for prog in sorted(os.listdir(d)):
                if prog not in pins.PROG_NAMES:
                    continue
                fd = lib.socklb_obj_get(os.fsencode(os.path.join(d, prog)), 0)
                if fd < 0:
                    continue
                try:
                    pid, cg, at = ffi.new("uint32_t *"), ffi.new("uint64_t *"), ffi.new("uint32_t *")
                    if lib.socklb_link_info(fd, pid, cg, at) == 0:
                        progs[prog] = int(pid[0])
                finally:
                    os.close(fd)
            out.append(LinkView(int(name), recorded.get(int(name)), progs))
        return out

    def status(self) -> Dict[str, Any]:
        """Everything ``socklb status`` shows, as plain data."""
        sp = self.spec
        missing = {f.name for f in features.missing()}
        return {
            "pin_dir": self.paths.root,
            "layout_version": int(lib.SOCKLB_LAYOUT_VERSION),
            "owner_pid": self.owner_pid(),
            "kernel": os.uname().release,
            "limits": {
                "max_services": sp.max_services,
                "max_backends": sp.max_backends,
                "maglev_size": sp.maglev_size,
                "max_maglev_services": sp.max_maglev_services,
                "max_affinity": sp.max_affinity,
                "udp_flows_per_socket": sp.udp_flows_per_socket,
            },
            "maps": [
                {
                    "name": name,
                    "type": _MAP_TYPES.get(self.map_types[name], str(self.map_types[name])),
                    "entries": n,
                    "max_entries": cap,
                }
                for name, (n, cap) in self.map_usage().items()
            ],
            "attachments": [
                {"cgroup_id": lv.cgroup_id, "cgroup": lv.cgroup, "programs": lv.programs} for lv in self.links()
            ],
            "features": {
                "socket_termination": "sock_destroy" not in missing,
                "selection_counters": "selections" in self.maps,
                "missing": sorted(missing),
            },
            "tracing": self.tracing(),
        }

    def tracing(self) -> Optional[Dict[str, Any]]:
        """Whether a ``socklb trace`` reader holds the lease, and events the
        ring buffer had no room for; None if the pins cannot trace."""
        m = self.maps.get("trace_ctl")
        if m is None:
            return None

        raw = m.lookup(b"\0\0\0\0")
        if raw is None:
            return None
        c = TRACE_CTL.unpack(raw)
        left = (c.lease_until_ns - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9
        return {"on": left > 0, "lease_left_s": round(max(left, 0.0), 3), "dropped": int(c.dropped)}


def _fam(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET
