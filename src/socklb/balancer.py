"""The live objects: :class:`Balancer` owns the loaded programs and maps,
:class:`Attachment` owns the attachment of those programs to one cgroup.

>>> from socklb import Balancer, Service, Backend
>>> svc = Service("10.96.0.10", 80, backends=[Backend("10.244.2.1", 8080)])
>>> with Balancer() as lb:                        # doctest: +SKIP
...     lb.upsert(svc)
...     att = lb.attach("/sys/fs/cgroup/unified/my-pods")
...     lb.services() == [svc]
True

How an update stays atomic for the datapath: a service's selectable backends
live in a *list* (slots, or a Maglev table) under a list id.  A change writes
the new backends and a new list first, then swaps the service's list id in one
map update, and only then deletes the old list and the removed backends.  A
``connect()`` that runs meanwhile sees the old list or the new one; if it read
the old one just before its deletion, it reads the service again.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _core, pins
from ._core import (
    ATTACH_INFO,
    BACKEND_VAL,
    META,
    SLOT_KEY,
    SLOT_VAL,
    SVC_KEY,
    SVC_VAL,
    U32,
    MapOps,
    check,
    ffi,
    htons,
    lib,
)
from .cgroup import check_cgroup2_dir
from .errors import (
    CapacityError,
    ClosedError,
    IncompatiblePinsError,
    InvalidValueError,
    MissingFeatureError,
    NotFoundError,
    PermissionDeniedError,
)
from .model import Affinity, Algorithm, Backend, BackendState, Protocol, Service, ServiceKey, normalize_key

__all__ = ["Balancer", "Attachment", "SyncResult", "ProgramStats", "DEFAULT_MAGLEV_SIZE", "maglev_table"]

DEFAULT_MAGLEV_SIZE = 16381
_MAX_MAGLEV_SIZE = 131071

_PROTO = {Protocol.TCP: lib.SOCKLB_PROTO_TCP, Protocol.UDP: lib.SOCKLB_PROTO_UDP}
_STATE = {
    BackendState.ACTIVE: lib.SOCKLB_STATE_ACTIVE,
    BackendState.TERMINATING: lib.SOCKLB_STATE_TERMINATING,
    BackendState.QUARANTINED: lib.SOCKLB_STATE_QUARANTINED,
    BackendState.MAINTENANCE: lib.SOCKLB_STATE_MAINTENANCE,
}
_ITER_FEATURE = ("the bpf_sock_destroy kfunc with tcp/udp socket iterators", "6.5")
_COUNTERS = {
    "connect": lib.SOCKLB_CNT_CONNECT,
    "sendmsg": lib.SOCKLB_CNT_SENDMSG,
    "recvmsg": lib.SOCKLB_CNT_RECVMSG,
    "getpeername": lib.SOCKLB_CNT_GETPEERNAME,
    "no_backend": lib.SOCKLB_CNT_NO_BACKEND,
    "retry": lib.SOCKLB_CNT_RETRY,
    "affinity_hit": lib.SOCKLB_CNT_AFFINITY_HIT,
    "sticky_hit": lib.SOCKLB_CNT_STICKY_HIT,
}


_U64 = struct.Struct("=Q")
# The struct socklb_config fields recorded in the pinned meta map, in the
# order of struct socklb_meta after magic and version.
_META_CONFIG = META.fields[2:]
assert all(f in {n for n, _ in ffi.typeof("struct socklb_config").fields} for f in _META_CONFIG)


def _addr_str(addr16: bytes) -> str:
    ip = ipaddress.IPv6Address(addr16)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def _find_cgroup(cgid: int) -> Optional[str]:
    """The cgroup v2 directory whose inode (cgroup id) is ``cgid``, if any."""
    from .cgroup import cgroup2_mount

    for root, dirs, _files in os.walk(cgroup2_mount()):
        for d in dirs:
            p = os.path.join(root, d)
            try:
                if os.stat(p).st_ino == cgid:
                    return p
            except OSError:
                continue
    return None


def _read_meta(pin_dir: str) -> Optional[Tuple[int, ...]]:
    """The limits recorded in a pinned meta map, None if there is none;
    refuses another layout version."""
    path = os.path.join(pin_dir, "maps", "meta")
    if not os.path.exists(path):
        if pins.pinned_maps(pin_dir):
            raise IncompatiblePinsError(pin_dir, 0, lib.SOCKLB_LAYOUT_VERSION, "maps are pinned but no meta map")
        return None
    buf = ffi.new("uint8_t[]", META.size)
    actual = ffi.new("uint32_t *")
    check(lib.socklb_read_pinned(path.encode(), buf, META.size, actual), f"reading {path}")
    raw = bytes(ffi.buffer(buf))
    magic, version = struct.unpack_from("=II", raw)
    if magic != lib.SOCKLB_META_MAGIC:
        raise IncompatiblePinsError(pin_dir, 0, lib.SOCKLB_LAYOUT_VERSION, "the meta map is not socklb's")
    if version != lib.SOCKLB_LAYOUT_VERSION or actual[0] != META.size:
        raise IncompatiblePinsError(pin_dir, version, lib.SOCKLB_LAYOUT_VERSION)
    return tuple(META.unpack(raw)[2:])


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _backend_ident(b: Backend) -> bytes:
    """What names a backend to Maglev: its address and port, so that its
    permutation is the same in every table and every process."""
    return b._a16 + b.port.to_bytes(2, "big")


def _maglev(idents: Sequence[bytes], weights: Sequence[int], ids: Sequence[int], size: int) -> Any:
    n = len(idents)
    if n == 0 or any(len(i) != 18 for i in idents):
        raise InvalidValueError("backends", "maglev needs at least one backend")
    table = ffi.new("uint32_t[]", size)
    check(
        lib.socklb_maglev(
            b"".join(idents), 18, ffi.new("uint32_t[]", list(weights)), ffi.new("uint32_t[]", list(ids)), n, table, size
        ),
        "building a maglev table",
    )
    return table


def maglev_table(backends: Sequence[Backend], size: int = DEFAULT_MAGLEV_SIZE) -> List[int]:
    """The Maglev lookup table socklb builds for these backends: for each of
    ``size`` entries, the index of the backend in ``backends``.  Built in the
    native core; exposed to inspect and test the distribution.

    >>> t = maglev_table([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)], 13)
    >>> sorted(set(t)), len(t)
    ([0, 1], 13)
    """
    if not isinstance(size, int) or not 2 < size <= _MAX_MAGLEV_SIZE or not _is_prime(size):
        raise InvalidValueError("size", f"must be a prime in 3..{_MAX_MAGLEV_SIZE}, not {size!r}")
    table = _maglev(
        [_backend_ident(b) for b in backends], [b.weight for b in backends], list(range(1, len(backends) + 1)), size
    )
    return [int(x) - 1 for x in table]


_ALGO = {
    Algorithm.RANDOM: lib.SOCKLB_ALGO_RANDOM,
    Algorithm.WEIGHTED: lib.SOCKLB_ALGO_WEIGHTED,
    Algorithm.MAGLEV: lib.SOCKLB_ALGO_MAGLEV,
}
_ALGO_BACK = {v: k for k, v in _ALGO.items()}
_STATE_BACK = {v: k for k, v in _STATE.items()}
_PROTO_BACK = {v: k for k, v in _PROTO.items()}


def _service_key(svc: Service) -> bytes:
    return SVC_KEY.pack(svc._a16, htons(svc.port), _PROTO[svc.protocol])


def _service_value(
    svc: Service, svc_id: int, list_id: int, count: int, total: int, members: int, algo_code: int, flags: int
) -> bytes:
    timeout = svc.affinity.timeout if svc.affinity else 0
    opts = lib.SOCKLB_SVC_O_TERMINATE_TCP if svc.terminate_tcp else 0
    return SVC_VAL.pack(svc_id, list_id, count, total, members, timeout, algo_code, flags, _ALGO[svc.algorithm], opts)


# Backend._state_idx is the position in BackendState, which is the C code.
assert [_STATE[s] for s in BackendState] == list(range(len(BackendState)))
_DRAINING = lib.SOCKLB_STATE_DRAINING


def _backend_value(b: Backend, svc_id: int, _pack: Callable[..., bytes] = BACKEND_VAL.pack) -> bytes:
    # A drained backend (weight 0) keeps its entry but is never chosen, not
    # even through affinity or a UDP socket's remembered choice.
    return _pack(b._a16, b._nport, b._state_idx if b.weight else _DRAINING, svc_id)


Member = Tuple[int, int, int, int]  # backend id, cumulative weight, weight, state
Members = Tuple[Member, ...]


def _selection(svc: Service, ids: Dict[Tuple[str, int], int]) -> Tuple[List[Backend], Members, int, int, int]:
    """One version of a service as the maps hold it: (usable backends,
    members, flags, algo code, total weight).  Members are the list's slots:
    the usable backends first, with their cumulative weights, then the rest."""
    # Active backends, or terminating ones when no active one is left
    # (Kubernetes' terminating-endpoint fallback).
    active = BackendState.ACTIVE
    usable = [b for b in svc.backends if b.state is active and b.weight > 0]
    flags = 0
    if not usable:
        usable = [b for b in svc.backends if b.state is BackendState.TERMINATING and b.weight > 0]
        if usable:
            flags |= lib.SOCKLB_SVC_F_FALLBACK
    if svc.affinity is not None:
        flags |= lib.SOCKLB_SVC_F_AFFINITY
    weights = [b.weight for b in usable]
    total = 0
    if svc.algorithm is Algorithm.MAGLEV:
        algo = lib.SOCKLB_ALGO_MAGLEV
        cum: Sequence[int] = range(1, len(usable) + 1)
    elif svc.algorithm is Algorithm.WEIGHTED and len(set(weights)) > 1:
        algo = lib.SOCKLB_ALGO_WEIGHTED
        cum = list(itertools.accumulate(weights))
        total = cum[-1]
    else:
        # Equal weights need no search: the datapath picks uniformly.
        algo = lib.SOCKLB_ALGO_RANDOM
        cum = range(1, len(usable) + 1)
    members = [(ids[b._key], c, b.weight, b._state_idx) for b, c in zip(usable, cum)]
    if len(usable) < len(svc.backends):
        chosen = {id(b) for b in usable}
        members += [(ids[b._key], 0, b.weight, b._state_idx) for b in svc.backends if id(b) not in chosen]
    return usable, tuple(members), flags, algo, total


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`Balancer.sync` changed, by service key."""

    added: Tuple[ServiceKey, ...] = ()
    updated: Tuple[ServiceKey, ...] = ()
    removed: Tuple[ServiceKey, ...] = ()
    unchanged: int = 0
    map_writes: int = 0
    """Map elements written or deleted."""

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


@dataclass(frozen=True)
class ProgramStats:
    """Kernel statistics of one program (counted while kernel.bpf_stats_enabled=1)."""

    name: str
    id: int
    run_cnt: int
    run_time_ns: int

    @property
    def avg_ns(self) -> float:
        return self.run_time_ns / self.run_cnt if self.run_cnt else 0.0


@dataclass
class _Live:
    """What is programmed for one service."""

    service: Service
    svc_id: int
    key: bytes
    value: bytes
    list_id: int
    slots: Members  # the list: usable members first
    count: int  # how many of them are usable
    backend_ids: Dict[Tuple[str, int], int]
    backend_vals: Dict[int, bytes]
    dirty: bool = False  # the maps disagree with `service` (adopted from a killed writer)


class _Ids:
    """Allocator of non-zero u32 ids that are not reused until the counter wraps."""

    def __init__(self) -> None:
        self._next = 1
        self._wrapped = False
        self._used: set[int] = set()

    def take(self) -> int:
        while True:
            i = self._next
            if self._next < 0xFFFFFFFF:
                self._next += 1
            else:
                self._next, self._wrapped = 1, True
            if i not in self._used:
                self._used.add(i)
                return i

    def take_many(self, n: int) -> Sequence[int]:
        """n ids; a contiguous range unless the counter is about to wrap."""
        start = self._next
        if start + n <= 0xFFFFFFFF and not self._wrapped:
            r = range(start, start + n)
            self._used.update(r)
            self._next = start + n
            return r
        return [self.take() for _ in range(n)]

    def give(self, i: int) -> None:
        self._used.discard(i)

    def mark(self, i: int) -> None:
        """Record an id found in use (adopting pinned state)."""
        self._used.add(i)
        if i >= self._next:
            self._next = i + 1 if i < 0xFFFFFFFF else 1


@dataclass
class _Plan:
    """Map writes for a batch of service changes, applied in a safe order."""

    backend_upd: List[Tuple[bytes, bytes]] = field(default_factory=list)  # new backends, before the swap
    backend_post: List[Tuple[bytes, bytes]] = field(default_factory=list)  # kept backends' new state, after it
    slot_upd: List[Tuple[bytes, bytes]] = field(default_factory=list)
    maglev_upd: List[Tuple[bytes, bytes]] = field(default_factory=list)
    svc_upd: List[Tuple[bytes, bytes]] = field(default_factory=list)
    svc_del: List[bytes] = field(default_factory=list)
    slot_del: List[bytes] = field(default_factory=list)
    maglev_del: List[bytes] = field(default_factory=list)
    backend_del: List[bytes] = field(default_factory=list)
    # Python-side bookkeeping to commit once the kernel has everything.
    live: Dict[ServiceKey, Optional[_Live]] = field(default_factory=dict)
    free_backend_ids: List[int] = field(default_factory=list)
    free_list_ids: List[int] = field(default_factory=list)
    free_svc_ids: List[int] = field(default_factory=list)
    affinity_purge: List[int] = field(default_factory=list)  # svc ids whose affinity entries go
    doomed: List[int] = field(default_factory=list)  # backend ids whose connected sockets are terminated
    doomed_tcp: bool = False
    new_ids: List[Tuple[str, int]] = field(default_factory=list)  # for rollback of allocations
    new_backend_ids: List[int] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return (
            len(self.backend_upd)
            + len(self.backend_post)
            + len(self.slot_upd)
            + len(self.maglev_upd)
            + len(self.svc_upd)
            + len(self.svc_del)
            + len(self.slot_del)
            + len(self.maglev_del)
            + len(self.backend_del)
        )


class Attachment:
    """The balancer's programs attached to one cgroup (bpf_links it owns).

    Every socket created by a process in the cgroup or below it is balanced
    until :meth:`detach`.  Usable as a context manager.  With a pinned
    balancer the links are pinned too: closing the balancer releases them
    without detaching, and the next :meth:`Balancer.open` adopts them.
    """

    def __init__(
        self, balancer: Balancer, cgroup: str, links: object, pin: Optional[str] = None, cgroup_id: int = 0
    ) -> None:
        self._balancer = balancer
        self.cgroup = cgroup
        """The cgroup directory (resolved path)."""
        self.cgroup_id = cgroup_id
        self._links: object = links
        self._pin = pin

    @property
    def attached(self) -> bool:
        """Whether this object still owns the attachment."""
        return self._links is not None

    @property
    def pinned(self) -> bool:
        return self._pin is not None

    def program_ids(self) -> List[int]:
        """Ids of the programs the links run now (they change on an upgrade)."""
        if self._links is None:
            raise ClosedError(f"{self.cgroup} is not attached")
        out = ffi.new("uint32_t *")
        ids = []
        for i in range(lib.SOCKLB_NPROGS):
            check(lib.socklb_links_prog_id(self._links, i, out), "link info")
            ids.append(int(out[0]))
        return ids

    def detach(self) -> None:
        """Detach from the cgroup (and remove the pins).  Idempotent; other
        attachments are untouched."""
        links, self._links = self._links, None
        if links is not None:
            if self._pin is not None:
                lib.socklb_links_unpin(links)
                self._balancer._forget_pinned(self)
                try:
                    os.rmdir(self._pin)
                except OSError:
                    pass
            lib.socklb_links_destroy(links)
            self._balancer._forget(self)

    def _release(self) -> None:
        """Give up the handles but leave the pinned links attached."""
        links, self._links = self._links, None
        if links is not None:
            lib.socklb_links_destroy(links)

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<Attachment {self.cgroup} {state}{' pinned' if self._pin else ''}>"


class Balancer:
    """Loads socklb's BPF programs and maps and programs services into them.

    Limits are fixed when the balancer is made; exceeding one raises
    :class:`~socklb.errors.CapacityError` before anything is written.

    :param max_services: services (VIP, port, protocol) at once.
    :param max_backends: service backends at once, summed over services.
    :param maglev_size: entries of each Maglev table, a prime.
    :param max_maglev_services: services that use ``Algorithm.MAGLEV`` at once
        (each table takes ``4 * maglev_size`` bytes of kernel memory).
    :param max_affinity: (client pod, service) affinity entries kept (LRU).
    """

    def __init__(
        self,
        *,
        max_services: int = 65536,
        max_backends: int = 262144,
        maglev_size: int = DEFAULT_MAGLEV_SIZE,
        max_maglev_services: int = 1024,
        max_affinity: int = 65536,
        terminate_sockets: Union[bool, str] = "auto",
        pin_dir: Union[str, os.PathLike[str], None] = None,
        adopt_only: bool = False,
    ) -> None:
        for name, v, hi in (
            ("max_services", max_services, 1 << 24),
            ("max_backends", max_backends, 1 << 26),
            ("max_maglev_services", max_maglev_services, 1 << 20),
            ("max_affinity", max_affinity, 1 << 26),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise InvalidValueError(name, f"must be an integer in 1..{hi}, not {v!r}")
        if (
            isinstance(maglev_size, bool)
            or not isinstance(maglev_size, int)
            or not 2 < maglev_size <= _MAX_MAGLEV_SIZE
            or not _is_prime(maglev_size)
        ):
            raise InvalidValueError("maglev_size", f"must be a prime in 3..{_MAX_MAGLEV_SIZE}, not {maglev_size!r}")
        self.max_services = max_services
        self.max_backends = max_backends
        self.maglev_size = maglev_size
        self.max_maglev_services = max_maglev_services
        if terminate_sockets not in (True, False, "auto"):
            raise InvalidValueError("terminate_sockets", f"must be True, False or 'auto', not {terminate_sockets!r}")

        cfg = ffi.new("struct socklb_config *")
        # Maps are twice the limits: an update writes its new entries before it
        # deletes the old ones (memory is used per entry, not per slot).
        cfg.max_services = 2 * max_services
        cfg.max_backends = 2 * max_backends
        cfg.max_slots = 2 * max_backends
        cfg.max_affinity = max_affinity
        cfg.maglev_size = maglev_size
        cfg.max_maglev = 2 * max_maglev_services

        self._lb: Optional[object] = None
        self._pin_dir: Optional[str] = None
        self._lock_fd: Optional[int] = None
        meta: Optional[Tuple[int, ...]] = None
        if pin_dir is not None:
            pin_path = os.path.abspath(os.fspath(pin_dir))
            if adopt_only:
                # Checked before anything is created: a failed open leaves no trace.
                try:
                    pinned = os.listdir(os.path.join(pin_path, "maps"))
                except (FileNotFoundError, NotADirectoryError):
                    pinned = []
                except PermissionError as e:
                    raise PermissionDeniedError(f"reading {pin_path}", e.errno or errno.EACCES) from None
                if "meta" not in pinned:
                    if pinned:
                        raise IncompatiblePinsError(
                            pin_path, 0, lib.SOCKLB_LAYOUT_VERSION, "maps are pinned but no meta map"
                        )
                    raise NotFoundError(f"nothing is pinned in {pin_path}")
            self._pin_dir = pins.prepare(pin_path)
            self._lock_fd = pins.lock(self._pin_dir)
            try:
                meta = _read_meta(self._pin_dir)
            except BaseException:
                self._unlock()
                raise
            if meta is not None:
                # Adopting: the pinned maps fix the limits.
                for name, value in zip(_META_CONFIG, meta):
                    setattr(cfg, name, value)
                self.max_services, self.max_backends = meta[0] // 2, meta[1] // 2
                self.maglev_size, self.max_maglev_services = meta[4], meta[5] // 2
            elif adopt_only:
                self._unlock()
                raise NotFoundError(f"nothing is pinned in {self._pin_dir}")
        out = ffi.new("struct socklb **")
        log = ffi.new("char[]", lib.SOCKLB_LOG_SIZE)
        failed = ffi.new("int *")
        if self._pin_dir is not None:
            rc = lib.socklb_open_pinned(cfg, self._pin_dir.encode(), out, log, lib.SOCKLB_LOG_SIZE, failed)
        else:
            rc = lib.socklb_open(cfg, out, log, lib.SOCKLB_LOG_SIZE, failed)
        if rc < 0:
            self._unlock()
            _core.raise_for_load(rc, ffi.string(log).decode(errors="replace"), failed[0])
        self._lb = out[0]
        self._lock = threading.RLock()

        def ops(name: str, ksz: int, vsz: int) -> MapOps:
            return MapOps(check(lib.socklb_map_fd(out[0], name.encode()), f"map {name}"), name, ksz, vsz)

        self._services_map = ops("services", SVC_KEY.size, SVC_VAL.size)
        self._slots_map = ops("slots", SLOT_KEY.size, SLOT_VAL.size)
        self._backends_map = ops("backends", U32.size, BACKEND_VAL.size)
        self._maglev_map = ops("maglev", U32.size, 4 * self.maglev_size)
        self._meta_map = ops("meta", U32.size, META.size)
        self._attach_map = ops("attachments", 8, ATTACH_INFO.size)
        self._counters_map = ops("counters", U32.size, 8)
        self._affinity_fd = check(lib.socklb_map_fd(out[0], b"affinity"), "map affinity")
        self._iter_err = int(lib.socklb_iter_status(out[0]))
        self._terminated = 0
        if terminate_sockets is True and self._iter_err:
            lib.socklb_close(out[0])
            self._lb = None
            self._unlock()
            raise MissingFeatureError(*_ITER_FEATURE, os.strerror(-self._iter_err))
        self._terminate = bool(terminate_sockets) and not self._iter_err
        self._live: Dict[ServiceKey, _Live] = {}
        self._n_backends = 0
        self._n_maglev = 0
        self._svc_ids = _Ids()
        self._list_ids = _Ids()
        self._backend_ids = _Ids()
        self._attachments: List[Attachment] = []
        if self._pin_dir is not None:
            try:
                if meta is None:
                    self._meta_map.update(
                        U32.pack(0),
                        META.pack(
                            lib.SOCKLB_META_MAGIC,
                            lib.SOCKLB_LAYOUT_VERSION,
                            *(getattr(cfg, name) for name in _META_CONFIG),
                        ),
                        1,
                    )
                else:
                    self._adopt()
                    self._adopt_attachments()
            except BaseException:
                self.close()
                raise

    @classmethod
    def open(cls, pin_dir: Union[str, os.PathLike[str]], *, terminate_sockets: Union[bool, str] = "auto") -> Balancer:
        """Adopt the state pinned in ``pin_dir`` by an earlier balancer (this
        process or another, alive no more): its services, its attachments,
        with this version's programs swapped in atomically.

        Raises :class:`~socklb.errors.NotFoundError` if nothing is pinned there,
        :class:`~socklb.errors.IncompatiblePinsError` if the pins have another
        map layout and :class:`~socklb.errors.PinLockedError` if another
        process owns them.
        """
        return cls(pin_dir=pin_dir, terminate_sockets=terminate_sockets, adopt_only=True)

    @property
    def pin_dir(self) -> Optional[str]:
        return self._pin_dir

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            pins.unlock(fd)

    # -- lifecycle ----------------------------------------------------------------

    def _handle(self) -> object:
        if self._lb is None:
            raise ClosedError("the balancer is closed")
        return self._lb

    @property
    def closed(self) -> bool:
        return self._lb is None

    def close(self) -> None:
        """Detach every attachment made by this balancer and free its programs and maps.

        Idempotent.  Sockets already connected keep their backend; new ones are
        no longer balanced.
        """
        with self._lock:
            for att in list(self._attachments):
                if self._pin_dir is not None:
                    att._release()  # pinned: stays attached for the next owner
                else:
                    att.detach()
            self._attachments.clear()
            lb, self._lb = self._lb, None
            if lb is not None:
                lib.socklb_close(lb)
            self._live.clear()
            self._unlock()

    def destroy(self) -> None:
        """Detach everything, remove every pin and close.  Without a pin
        directory this is :meth:`close`."""
        with self._lock:
            pin_dir = self._pin_dir
            for att in list(self._attachments):
                att.detach()
            self._pin_dir = None  # close() now detaches nothing more and keeps nothing
            try:
                if pin_dir is not None:
                    pins.remove(pin_dir)
            finally:
                self.close()

    def __enter__(self) -> Balancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lb", None) is not None:
            self.close()

    # -- attachments ---------------------------------------------------------------

    def attach(self, cgroup_path: Union[str, os.PathLike[str]]) -> Attachment:
        """Balance the sockets of every process in ``cgroup_path`` (a cgroup v2
        directory) and its descendants.  Returns the :class:`Attachment` that owns it.
        """
        path = check_cgroup2_dir(os.fspath(cgroup_path))
        with self._lock:
            lb = self._handle()
            if any(a.cgroup == path for a in self._attachments):
                raise InvalidValueError("cgroup_path", f"{path} is already attached by this balancer")
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                cgid = os.fstat(fd).st_ino
                out = ffi.new("struct socklb_links **")
                check(lib.socklb_attach(lb, fd, out), f"attaching to cgroup {path}")
            finally:
                os.close(fd)
            pin = None
            if self._pin_dir is not None:
                pin = os.path.join(self._pin_dir, "links", str(cgid))
                try:
                    pins.make_dir(pin)
                    check(lib.socklb_links_pin(out[0], pin.encode()), f"pinning the links of {path}")
                    self._attach_map.update(_U64.pack(cgid), ATTACH_INFO.pack(os.fsencode(path)), 1)
                except BaseException:
                    lib.socklb_links_unpin(out[0])
                    lib.socklb_links_destroy(out[0])
                    raise
            att = Attachment(self, path, out[0], pin, cgid)
            self._attachments.append(att)
            return att

    def _adopt(self) -> None:
        """Rebuild the Python view of the pinned maps, repair what a killed
        predecessor left half-written, and adopt its attachments.

        A service is read back from its current list, which holds exactly one
        version of it (every member with its weight and state); whatever no
        current list refers to was written by an update that never swapped
        in, or was about to be deleted, and goes."""
        services = {k: v for k in self._services_map.keys(2 * self.max_services) if (v := self._services_map.lookup(k))}
        backends: Dict[int, bytes] = {}
        for k in self._backends_map.keys(2 * self.max_backends):
            v = self._backends_map.lookup(k)
            if v is not None:
                backends[U32.unpack(k)[0]] = v
        lists: Dict[int, Dict[int, Member]] = {}
        for k in self._slots_map.keys(2 * self.max_backends):
            v = self._slots_map.lookup(k)
            if v is not None:
                lid, idx = SLOT_KEY.unpack(k)
                lists.setdefault(lid, {})[idx] = SLOT_VAL.unpack(v)
        tables = {U32.unpack(k)[0] for k in self._maglev_map.keys(2 * self.max_maglev_services)}

        plan = _Plan()
        used_lists, used_backends, dirty = set(), set(), []
        for key, value in services.items():
            addr, nport, proto = SVC_KEY.unpack(key)
            svc_id, list_id, count, _total, n_members, timeout, algo, flags, req_algo, opts = SVC_VAL.unpack(value)
            entries = lists.get(list_id, {})
            kernel: Members = tuple(entries[i] for i in range(n_members) if i in entries)
            try:
                if len(kernel) != n_members:
                    raise InvalidValueError("list", "incomplete")
                members = []
                for bid, _cum, weight, state in kernel:
                    baddr, bport, _dstate, owner = BACKEND_VAL.unpack(backends[bid])
                    if owner != svc_id:
                        raise InvalidValueError("backend", "of another service")
                    members.append(Backend(_addr_str(baddr), socket.ntohs(bport), weight, _STATE_BACK[state]))
                svc = Service(
                    _addr_str(addr),
                    socket.ntohs(nport),
                    _PROTO_BACK[proto],
                    members,
                    _ALGO_BACK.get(req_algo, Algorithm.RANDOM),
                    Affinity(timeout) if flags & lib.SOCKLB_SVC_F_AFFINITY else None,
                    bool(opts & lib.SOCKLB_SVC_O_TERMINATE_TCP),
                )
            except (InvalidValueError, KeyError):
                # Not something socklb writes, even when killed: drop it rather than guess.
                plan.svc_del.append(key)
                continue
            ids = {(b.address, b.port): m[0] for b, m in zip(members, kernel)}
            usable, expected, eflags, ealgo, etotal = _selection(svc, ids)
            vals = {bid: _backend_value(b, svc_id) for b, bid in zip(members, (m[0] for m in kernel))}
            consistent = (
                expected == kernel
                and value == _service_value(svc, svc_id, list_id, len(usable), etotal, len(expected), ealgo, eflags)
                and all(backends[bid] == v for bid, v in vals.items())
                and (
                    algo != lib.SOCKLB_ALGO_MAGLEV
                    or not usable
                    or self._maglev_map.lookup(U32.pack(list_id)) == self._maglev_table(usable, ids)
                )
            )
            kernel_vals = {bid: backends[bid] for bid in vals}
            self._live[svc.key] = _Live(
                svc, svc_id, key, value, list_id, kernel, count, ids, kernel_vals, dirty=not consistent
            )
            self._n_backends += len(ids)
            self._n_maglev += svc.algorithm is Algorithm.MAGLEV
            self._svc_ids.mark(svc_id)
            self._list_ids.mark(list_id)
            used_lists.add(list_id)
            for bid in ids.values():
                self._backend_ids.mark(bid)
                used_backends.add(bid)
            if not consistent:
                dirty.append(svc)
        # Whatever no service references is left over from a killed update.
        for lid, got in lists.items():
            if lid not in used_lists:
                plan.slot_del.extend(SLOT_KEY.pack(lid, i) for i in got)
        plan.maglev_del.extend(U32.pack(lid) for lid in tables if lid not in used_lists)
        plan.backend_del.extend(U32.pack(bid) for bid in backends if bid not in used_backends)
        self._apply(plan)
        if dirty:
            self._apply(self._plan({s.key: s for s in dirty}, remove_missing=False))

    def _adopt_attachments(self) -> None:
        assert self._pin_dir is not None
        paths = {}
        for k in self._attach_map.keys(4096):
            v = self._attach_map.lookup(k)
            if v is not None:
                paths[_U64.unpack(k)[0]] = os.fsdecode(ATTACH_INFO.unpack(v)[0].rstrip(b"\0"))
        links_dir = os.path.join(self._pin_dir, "links")
        for name in sorted(os.listdir(links_dir)):
            if not name.isdigit():
                continue  # not a cgroup id: not socklb's, left alone
            pin = os.path.join(links_dir, name)
            cgid = int(name) if name.isdigit() else -1
            path = paths.pop(cgid, None) or _find_cgroup(cgid)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if path else -1
            except OSError:
                fd = -1
            if fd < 0 or os.fstat(fd).st_ino != cgid:
                # The cgroup is gone: its links are defunct; drop the pins.
                if fd >= 0:
                    os.close(fd)
                pins.remove_links(pin)
                self._attach_map.delete(_U64.pack(cgid), 1)
                continue
            try:
                out = ffi.new("struct socklb_links **")
                check(lib.socklb_links_adopt(self._handle(), fd, pin.encode(), out), f"adopting the links of {path}")
            finally:
                os.close(fd)
            assert path is not None
            self._attach_map.update(_U64.pack(cgid), ATTACH_INFO.pack(os.fsencode(path)), 1)
            self._attachments.append(Attachment(self, path, out[0], pin, cgid))
        for cgid in paths:  # recorded, but no links were pinned
            self._attach_map.delete(_U64.pack(cgid), 1)

    def _forget_pinned(self, att: Attachment) -> None:
        with self._lock:
            if self._lb is not None:
                self._attach_map.delete(_U64.pack(att.cgroup_id), 1)

    def attachments(self) -> List[Attachment]:
        """The attachments this balancer made that are still attached."""
        with self._lock:
            return list(self._attachments)

    def _forget(self, att: Attachment) -> None:
        with self._lock:
            if att in self._attachments:
                self._attachments.remove(att)

    # -- services ------------------------------------------------------------------

    def services(self) -> List[Service]:
        """The services programmed, in the order they were first added."""
        with self._lock:
            self._handle()
            return [lv.service for lv in self._live.values()]

    def get(self, key: Union[Service, ServiceKey, Tuple[str, int]]) -> Service:
        """The programmed service with this key; :class:`~socklb.errors.NotFoundError` if none."""
        k = normalize_key(key)
        with self._lock:
            self._handle()
            lv = self._live.get(k)
            if lv is None:
                raise NotFoundError(f"no service {k}")
            return lv.service

    def upsert(self, service: Service) -> bool:
        """Add the service or replace the one with the same key.  Returns whether
        anything changed.  Atomic for the datapath."""
        if not isinstance(service, Service):
            raise InvalidValueError("service", f"must be a Service, not {type(service).__name__}")
        with self._lock:
            self._handle()
            plan = self._plan({service.key: service}, remove_missing=False)
            self._apply(plan)
            return plan.writes > 0

    def remove(self, key: Union[Service, ServiceKey, Tuple[str, int]]) -> None:
        """Remove a service, given as a Service or its (address, port, protocol) key."""
        k = normalize_key(key)
        with self._lock:
            self._handle()
            if k not in self._live:
                raise NotFoundError(f"no service {k}")
            plan = self._plan({k: None}, remove_missing=False)
            self._apply(plan)

    def sync(self, services: Iterable[Service]) -> SyncResult:
        """Make the programmed services exactly ``services``, with the fewest map
        writes; unchanged services are not touched.  Returns what changed."""
        want: Dict[ServiceKey, Optional[Service]] = {}
        for i, s in enumerate(services):
            if not isinstance(s, Service):
                raise InvalidValueError(f"services[{i}]", f"must be a Service, not {type(s).__name__}")
            if s.key in want:
                raise InvalidValueError(f"services[{i}]", f"service {s} is listed twice")
            want[s.key] = s
        with self._lock:
            self._handle()
            for k in self._live:
                if k not in want:
                    want[k] = None
            before = dict(self._live)
            plan = self._plan(want, remove_missing=True)
            self._apply(plan)
            added, updated, removed = [], [], []
            for k, lv in plan.live.items():
                if lv is None:
                    removed.append(k)
                elif k not in before:
                    added.append(k)
                else:
                    updated.append(k)
            return SyncResult(tuple(added), tuple(updated), tuple(removed), len(want) - len(plan.live), plan.writes)

    # -- planning ------------------------------------------------------------------

    def _plan(self, want: Dict[ServiceKey, Optional[Service]], remove_missing: bool) -> _Plan:
        """Compute the map writes that take the programmed state to ``want``
        (None removes).  Checks capacity first; allocates ids (released again
        by _apply if the kernel refuses)."""
        plan = _Plan()
        n_services = len(self._live)
        n_backends = self._n_backends
        n_maglev = self._n_maglev
        for k, svc in want.items():
            old = self._live.get(k)
            if svc is None:
                if old is not None:
                    n_services -= 1
                    n_backends -= len(old.backend_ids)
                    n_maglev -= old.service.algorithm is Algorithm.MAGLEV
                continue
            if old is not None and old.service == svc and not old.dirty:
                continue
            if old is None:
                n_services += 1
            else:
                n_backends -= len(old.backend_ids)
                n_maglev -= old.service.algorithm is Algorithm.MAGLEV
            n_backends += len(svc.backends)
            n_maglev += svc.algorithm is Algorithm.MAGLEV
        if n_services > self.max_services:
            raise CapacityError("services", n_services, self.max_services)
        if n_backends > self.max_backends:
            raise CapacityError("backends", n_backends, self.max_backends)
        if n_maglev > self.max_maglev_services:
            raise CapacityError("maglev services", n_maglev, self.max_maglev_services)

        try:
            for k, svc in want.items():
                old = self._live.get(k)
                if svc is None:
                    if old is not None:
                        self._plan_remove(plan, k, old)
                elif old is None or old.service != svc or old.dirty:
                    self._plan_upsert(plan, k, svc, old)
        except BaseException:
            self._release_new_ids(plan)
            raise
        return plan

    def _plan_remove(self, plan: _Plan, k: ServiceKey, old: _Live) -> None:
        plan.svc_del.append(old.key)
        self._drop_list(plan, old)
        for bid in old.backend_ids.values():
            plan.backend_del.append(U32.pack(bid))
            plan.free_backend_ids.append(bid)
        plan.free_svc_ids.append(old.svc_id)
        self._doom(plan, old.service, [m[0] for m in old.slots[: old.count]])
        if old.service.affinity is not None:
            plan.affinity_purge.append(old.svc_id)
        plan.live[k] = None

    def _drop_list(self, plan: _Plan, old: _Live) -> None:
        if old.service.algorithm is Algorithm.MAGLEV and old.count:
            plan.maglev_del.append(U32.pack(old.list_id))
        plan.slot_del.extend([SLOT_KEY.pack(old.list_id, i) for i in range(len(old.slots))])
        plan.free_list_ids.append(old.list_id)

    def _plan_upsert(self, plan: _Plan, k: ServiceKey, svc: Service, old: Optional[_Live]) -> None:
        if old is None:
            svc_id = self._svc_ids.take()
            plan.new_ids.append(("svc", svc_id))
        else:
            svc_id = old.svc_id
        if old is not None and (old.service.affinity is None) != (svc.affinity is None):
            # Switching affinity on or off starts from a clean slate, both ways.
            plan.affinity_purge.append(svc_id)

        bs = svc.backends
        u32 = U32.pack
        if old is None:
            # A new service: every backend is new (the common case of a full sync).
            bids = self._backend_ids.take_many(len(bs))
            plan.new_backend_ids.extend(bids)
            ids = {b._key: bid for b, bid in zip(bs, bids)}
            pack = BACKEND_VAL.pack
            vals = {
                bid: pack(b._a16, b._nport, b._state_idx if b.weight else _DRAINING, svc_id) for b, bid in zip(bs, bids)
            }
            plan.backend_upd.extend([(u32(bid), v) for bid, v in vals.items()])
        else:
            # Backends the new version adds are written before the swap; the
            # datapath state of kept ones only after it, so that the version
            # the maps describe is always the old or the new one.
            ids, vals = {}, {}
            old_ids, old_vals = old.backend_ids, old.backend_vals
            take, new_ids = self._backend_ids.take, plan.new_backend_ids
            for b in bs:
                bk = b._key
                val = _backend_value(b, svc_id)
                bid = old_ids.get(bk)
                if bid is None:
                    bid = take()
                    new_ids.append(bid)
                    plan.backend_upd.append((u32(bid), val))
                elif old_vals.get(bid) != val:
                    plan.backend_post.append((u32(bid), val))
                ids[bk] = bid
                vals[bid] = val

        usable, members, flags, algo_code, total = _selection(svc, ids)
        count = len(usable)
        maglev = svc.algorithm is Algorithm.MAGLEV
        if (
            old is not None
            and not old.dirty
            and old.slots == members
            and (old.service.algorithm is Algorithm.MAGLEV) == maglev
        ):
            list_id = old.list_id
        else:
            list_id = self._list_ids.take()
            plan.new_ids.append(("list", list_id))
            kp, vp = SLOT_KEY.pack, SLOT_VAL.pack
            plan.slot_upd.extend([(kp(list_id, i), vp(*m)) for i, m in enumerate(members)])
            if maglev and usable:
                plan.maglev_upd.append((u32(list_id), self._maglev_table(usable, ids)))
            if old is not None:
                self._drop_list(plan, old)

        key = _service_key(svc)
        value = _service_value(svc, svc_id, list_id, count, total, len(members), algo_code, flags)
        if old is None or old.value != value:
            plan.svc_upd.append((key, value))
        if old is not None:
            for bk, bid in old.backend_ids.items():
                if bk not in ids:
                    plan.backend_del.append(u32(bid))
                    plan.free_backend_ids.append(bid)
            # Sockets stay on a backend that was chosen before, unless it was
            # removed or left the active state (a drained one keeps its sockets).
            chosen = {m[0] for m in members[:count]}
            active = {ids[b._key] for b in bs if b.state is BackendState.ACTIVE}
            self._doom(plan, svc, [m[0] for m in old.slots[: old.count] if m[0] not in chosen and m[0] not in active])
        plan.live[k] = _Live(svc, svc_id, key, value, list_id, members, count, ids, vals)

    def _doom(self, plan: _Plan, svc: Service, ids: List[int]) -> None:
        if not ids or not self._terminate:
            return
        if svc.protocol is Protocol.UDP:
            plan.doomed.extend(ids)
        elif svc.terminate_tcp:
            plan.doomed.extend(ids)
            plan.doomed_tcp = True

    def _maglev_table(self, usable: Sequence[Backend], ids: Dict[Tuple[str, int], int]) -> bytes:
        table = _maglev(
            [_backend_ident(b) for b in usable],
            [b.weight for b in usable],
            [ids[(b.address, b.port)] for b in usable],
            self.maglev_size,
        )
        return bytes(ffi.buffer(table))

    def _release_new_ids(self, plan: _Plan) -> None:
        pools = {"svc": self._svc_ids, "backend": self._backend_ids, "list": self._list_ids}
        for kind, i in plan.new_ids:
            pools[kind].give(i)
        for i in plan.new_backend_ids:
            self._backend_ids.give(i)

    # -- applying ------------------------------------------------------------------

    def _apply(self, plan: _Plan) -> None:
        """Write the plan: new state first, then the swap, then the clean-up.

        A failure before the swap is rolled back completely, so the kernel and
        this object keep the previous state."""

        def upd(m: MapOps, rows: List[Tuple[bytes, bytes]]) -> None:
            if rows:
                m.update(b"".join([r[0] for r in rows]), b"".join([r[1] for r in rows]), len(rows))

        written: List[Tuple[MapOps, List[bytes]]] = []
        try:
            for m, rows in (
                (self._backends_map, plan.backend_upd),
                (self._slots_map, plan.slot_upd),
                (self._maglev_map, plan.maglev_upd),
            ):
                upd(m, rows)
                written.append((m, [r[0] for r in rows]))
            upd(self._services_map, plan.svc_upd)
        except BaseException:
            self._rollback(plan, written)
            raise
        # The swap is done: kept backends take their new state, and the old
        # lists, unreachable for new lookups, are removed.
        upd(self._backends_map, plan.backend_post)
        self._services_map.delete(b"".join(plan.svc_del), len(plan.svc_del))
        self._slots_map.delete(b"".join(plan.slot_del), len(plan.slot_del))
        self._maglev_map.delete(b"".join(plan.maglev_del), len(plan.maglev_del))
        self._backends_map.delete(b"".join(plan.backend_del), len(plan.backend_del))
        if plan.doomed:
            self._terminate_sockets(plan.doomed, plan.doomed_tcp)
        if plan.affinity_purge:
            ids = sorted(set(plan.affinity_purge))
            check(
                lib.socklb_affinity_purge(self._affinity_fd, ffi.new("uint32_t[]", ids), len(ids)),
                "purge of affinity entries",
            )

        for k, lv in plan.live.items():
            old = self._live.get(k)
            if old is not None:
                self._n_backends -= len(old.backend_ids)
                self._n_maglev -= old.service.algorithm is Algorithm.MAGLEV
            if lv is None:
                self._live.pop(k, None)
            else:
                self._live[k] = lv
                self._n_backends += len(lv.backend_ids)
                self._n_maglev += lv.service.algorithm is Algorithm.MAGLEV
        for i in plan.free_backend_ids:
            self._backend_ids.give(i)
        for i in plan.free_list_ids:
            self._list_ids.give(i)
        for i in plan.free_svc_ids:
            self._svc_ids.give(i)

    def _rollback(self, plan: _Plan, written: List[Tuple[MapOps, List[bytes]]]) -> None:
        """Undo a plan that failed before or during the swap.  Before the swap
        only new keys are written (new backends, lists, tables): delete them;
        put back the service entries that a partial batch may have swapped."""
        by_key = {lv.key: lv for lv in self._live.values()}
        for key, _ in plan.svc_upd:
            old = by_key.get(key)
            try:
                if old is not None:
                    self._services_map.update(old.key, old.value, 1)
                else:
                    self._services_map.delete(key, 1)
            except Exception:
                pass  # best effort; the first error is what is raised
        for m, keys in reversed(written):
            try:
                m.delete(b"".join(keys), len(keys))
            except Exception:
                pass
        self._release_new_ids(plan)

    # -- sockets stuck on removed backends -------------------------------------

    def _client_netns(self) -> List[int]:
        """Open fds of the network namespaces of every process in the attached
        cgroups: socket iterators walk one namespace at a time."""
        seen: Dict[Tuple[int, int], int] = {}
        for att in self._attachments:
            for root, _dirs, files in os.walk(att.cgroup):
                if "cgroup.procs" not in files:
                    continue
                try:
                    with open(os.path.join(root, "cgroup.procs"), encoding="ascii") as f:
                        pids = f.read().split()
                except OSError:
                    continue
                for pid in pids:
                    try:
                        st = os.stat(f"/proc/{pid}/ns/net")
                        if (st.st_dev, st.st_ino) not in seen:
                            seen[(st.st_dev, st.st_ino)] = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        continue  # the process exited meanwhile
        return list(seen.values())

    def _terminate_sockets(self, ids: List[int], tcp: bool) -> int:
        fds = self._client_netns()
        try:
            if not fds:
                return 0
            out = ffi.new("uint64_t *")
            check(
                lib.socklb_destroy(
                    self._handle(), ffi.new("uint32_t[]", ids), len(ids), ffi.new("int[]", fds), len(fds), int(tcp), out
                ),
                "terminating sockets connected to removed backends",
            )
            self._terminated += int(out[0])
            return int(out[0])
        finally:
            for fd in fds:
                os.close(fd)

    @property
    def terminates_sockets(self) -> bool:
        """Whether sockets connected to a removed backend are terminated
        (the kernel has ``bpf_sock_destroy``, Linux 6.5, and it was not turned off)."""
        return self._terminate

    def socket_states(self) -> int:
        """How many per-socket entries socklb holds right now: one per socket it
        connected, one per unconnected UDP socket it translated (socket-local
        storage, freed with the socket)."""
        with self._lock:
            lb = self._handle()
            if self._iter_err:
                raise MissingFeatureError(*_ITER_FEATURE, os.strerror(-self._iter_err))
            return check(int(lib.socklb_count_states(lb)), "counting socket states")

    # -- observability -------------------------------------------------------------

    def counters(self) -> Dict[str, int]:
        """Datapath counters summed over CPUs: translations made, refusals, retries."""
        with self._lock:
            self._handle()
            ncpu = _core.possible_cpus()
            out = {}
            out["terminated"] = self._terminated
            for name, idx in _COUNTERS.items():
                raw = self._counters_map.lookup(U32.pack(idx), 8 * ncpu) or b""
                out[name] = sum(int.from_bytes(raw[i : i + 8], sys.byteorder) for i in range(0, len(raw), 8))
            return out

    def dump(self) -> Dict[str, Dict[bytes, bytes]]:
        """The raw contents of the service, slot, backend and Maglev maps, by map
        name: packed keys to packed values, as the datapath sees them."""
        with self._lock:
            self._handle()
            out: Dict[str, Dict[bytes, bytes]] = {}
            for m, cap in (
                (self._services_map, 2 * self.max_services),
                (self._slots_map, 2 * self.max_backends),
                (self._backends_map, 2 * self.max_backends),
                (self._maglev_map, 2 * self.max_maglev_services),
            ):
                out[m.name] = {k: v for k in m.keys(cap) if (v := m.lookup(k)) is not None}
            return out

    def program_stats(self) -> List[ProgramStats]:
        """Per-program run counts and run time from the kernel's BPF statistics.

        The kernel counts only while ``/proc/sys/kernel/bpf_stats_enabled`` is 1.
        """
        with self._lock:
            lb = self._handle()
            out = []
            st = ffi.new("struct socklb_prog_stats *")
            for i in range(lib.SOCKLB_NPROGS):
                check(lib.socklb_prog_stats(lb, i, st), "program statistics")
                out.append(
                    ProgramStats(ffi.string(lib.socklb_prog_name(i)).decode(), st.id, st.run_cnt, st.run_time_ns)
                )
            return out

    def __repr__(self) -> str:
        if self._lb is None:
            return "<Balancer closed>"
        return f"<Balancer services={len(self._live)} attachments={len(self._attachments)}>"
