"""The live datapath: the loaded BPF object, its maps and its links.

:class:`Datapath` owns the native handle (``struct socklb *``) made from a
:class:`~socklb.datapath.spec.DatapathSpec`.  Its children hold a reference to it and
check it on every call, so no file descriptor or pointer is used after the
owner closed: a :class:`Map` for each map, a :class:`LinkSet` for the links
of one cgroup.  Every native call on a handle runs under the datapath's lock,
so a thread closing the datapath (or closing a link set) never frees what
another thread is using; calls after that raise
:class:`~socklb.errors.ClosedError`.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
from contextlib import ExitStack
from typing import Any, Dict, List, Optional, Sequence, Tuple

from socklb._native import check, features, ffi, lib
from socklb.datapath.spec import DatapathSpec
from socklb.errors import ClosedError, KernelError, PermissionDeniedError, VerifierError

__all__ = [
    "Datapath",
    "Map",
    "LinkSet",
    "PROGRAMS",
    "GROUP_PROGRAMS",
    "MAPS",
    "raise_for_load",
    "update_rows_parallel",
    "write_threads",
]


def _program_names() -> Tuple[str, ...]:
    names = [lib.socklb_prog_name(i) for i in range(lib.SOCKLB_NPROGS)]
    if any(n == ffi.NULL for n in names):  # pragma: no cover - a build bug
        raise ImportError("socklb: the embedded BPF object does not have its SOCKLB_NPROGS programs")
    return tuple(ffi.string(n).decode() for n in names)


PROGRAMS: Tuple[str, ...] = _program_names()
"""The datapath's programs, in the loader's order (named from the object)."""

GROUP_MAIN, GROUP_EXCLUDE, GROUP_HOSTONLY = lib.SOCKLB_GROUP_MAIN, lib.SOCKLB_GROUP_EXCLUDE, lib.SOCKLB_GROUP_HOSTONLY


def _group_names(group: int) -> Tuple[str, ...]:
    return tuple(ffi.string(lib.socklb_group_prog_name(group, i)).decode() for i in range(lib.SOCKLB_NGATE))


GROUP_PROGRAMS: Dict[int, Tuple[str, ...]] = {
    GROUP_MAIN: PROGRAMS,
    GROUP_EXCLUDE: _group_names(GROUP_EXCLUDE),
    GROUP_HOSTONLY: _group_names(GROUP_HOSTONLY),
}
"""The programs of each attachment group: the balancer's, an exclusion's
(``exclude_*``) and a host-netns-only scope's (``hostonly_*``)."""


def _map_names() -> Tuple[str, ...]:
    names: List[str] = []
    while (n := lib.socklb_map_name(len(names))) != ffi.NULL:
        names.append(ffi.string(n).decode())
    return tuple(names)


MAPS: Tuple[str, ...] = _map_names()
"""The datapath's maps, by name (read from the object; every one is pinned)."""


def raise_for_load(rc: int, log: str, failed_prog: int) -> None:
    """Turn a failed ``socklb_open`` into the most specific exception."""
    err = -rc
    if err in (_errno.EPERM, _errno.EACCES) and os.geteuid() != 0:
        raise PermissionDeniedError("loading the BPF programs", err)
    features.require()
    if failed_prog >= 0:
        raise VerifierError(f"loading {PROGRAMS[failed_prog]}", err, log)
    if err in (_errno.EPERM, _errno.EACCES):
        raise PermissionDeniedError("loading the BPF programs", err)
    raise KernelError("loading the BPF object", err, log.strip().splitlines()[-1] if log.strip() else "")


class Datapath:
    """socklb's BPF programs and maps, loaded (and pinned under ``pin_dir``/maps
    when given: maps already pinned there are reused)."""

    def __init__(self, spec: DatapathSpec, pin_dir: Optional[str] = None) -> None:
        self.spec = spec
        self.lock = threading.RLock()
        out = ffi.new("struct socklb **")
        log = ffi.new("char[]", lib.SOCKLB_LOG_SIZE)
        failed = ffi.new("int *")
        cfg = spec.config()
        self.missing = features.missing()
        """The features this kernel lacks (or a test forced missing): the
        loader loaded the fallbacks for them."""
        cfg.missing = features.missing_bits()
        if pin_dir is not None:
            rc = lib.socklb_open_pinned(cfg, pin_dir.encode(), out, log, lib.SOCKLB_LOG_SIZE, failed)
        else:
            rc = lib.socklb_open(cfg, out, log, lib.SOCKLB_LOG_SIZE, failed)
        if rc < 0:
            raise_for_load(rc, ffi.string(log).decode(errors="replace"), failed[0])
        self._lb: Optional[Any] = out[0]
        self.iter_error = -int(lib.socklb_iter_status(out[0]))
        """0, or the errno why the socket iterators are unavailable (counting
        socket states needs them, in full or counting only)."""
        self.destroy_error = -int(lib.socklb_iter_destroy_status(out[0]))
        """0 when the terminating iterators (bpf_sock_destroy) loaded, else the
        errno why not."""
        self.termination = self._termination()
        """How sockets on removed backends are terminated: "bpf_sock_destroy"
        (the socket iterators), "sock_diag" (SOCK_DESTROY from user space) or
        "" (not at all: :attr:`termination_reason` says why)."""
        self.termination_reason = "" if self.termination else self._no_termination_reason()

    def _termination(self) -> str:
        if not self.destroy_error:
            return "bpf_sock_destroy"
        if features.DIAG_DESTROY not in self.missing and not self.iter_error:
            return "sock_diag"  # needs the listing iterator of the counting-only object
        return ""

    def _no_termination_reason(self) -> str:
        if features.DIAG_DESTROY not in self.missing and features.ITER_STORAGE in self.missing:
            f = features.ITER_STORAGE
            return (
                f"missing {features.SOCK_DESTROY.description} (Linux {features.SOCK_DESTROY.kernel}), "
                f"and sock_diag's way needs {f.description} (Linux {f.kernel})"
            )
        why = (
            f"missing {features.SOCK_DESTROY.description} (Linux {features.SOCK_DESTROY.kernel})"
            if features.SOCK_DESTROY in self.missing
            else f"the terminating socket iterators did not load ({os.strerror(self.destroy_error)})"
        )
        return f"{why} and {features.DIAG_DESTROY.description}"

    def handle(self) -> Any:
        """The native handle; the caller holds :attr:`lock`."""
        if self._lb is None:
            raise ClosedError("the balancer is closed")
        return self._lb

    @property
    def closed(self) -> bool:
        return self._lb is None

    def close(self) -> None:
        """Free the programs and maps (links made from them stay until they are
        destroyed: a bpf_link holds its program).  Idempotent."""
        with self.lock:
            lb, self._lb = self._lb, None
            if lb is not None:
                lib.socklb_close(lb)

    def map_memory(self) -> Dict[str, int]:
        """Kernel memory charged to each map, in bytes (``memlock`` of its fdinfo)."""
        out = {}
        with self.lock:
            for name in MAPS:
                fd = check(lib.socklb_map_fd(self.handle(), name.encode()), f"map {name}")
                with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
                    for line in f:
                        if line.startswith("memlock:"):
                            out[name] = int(line.split()[1])
            return out

    def map(self, name: str, key_size: Optional[int] = None, value_size: Optional[int] = None) -> Map:
        """The map called ``name``, its key and value sizes the loaded
        object's (as the kernel has them; given ones must agree)."""
        with self.lock:
            fd = check(lib.socklb_map_fd(self.handle(), name.encode()), f"map {name}")
            t, k, v, m = (ffi.new("uint32_t *") for _ in range(4))
            check(lib.socklb_map_info(fd, t, k, v, m), f"map info of {name}")
        if (key_size or k[0], value_size or v[0]) != (k[0], v[0]):
            raise ValueError(f"map {name}: key and value sizes are {k[0]} and {v[0]}, not {key_size} and {value_size}")
        return Map(self, name, fd, int(k[0]), int(v[0]))

    def attach(self, cgroup_fd: int, what: str, group: int = GROUP_MAIN) -> LinkSet:
        with self.lock:
            out = ffi.new("struct socklb_links **")
            check(lib.socklb_attach_group(self.handle(), group, cgroup_fd, out), f"attaching to cgroup {what}")
            return LinkSet(self, out[0], group)

    def adopt_links(self, cgroup_fd: int, pin: str, what: str, group: int = GROUP_MAIN) -> LinkSet:
        """The links pinned in ``pin``, switched to this datapath's programs."""
        with self.lock:
            out = ffi.new("struct socklb_links **")
            check(
                lib.socklb_links_adopt_group(self.handle(), group, cgroup_fd, pin.encode(), out),
                f"adopting the links of {what}",
            )
            return LinkSet(self, out[0], group)

    def program_stats(self) -> List[Tuple[str, int, int, int]]:
        """(name, id, run_cnt, run_time_ns) of each program."""
        with self.lock:
            lb = self.handle()
            st = ffi.new("struct socklb_prog_stats *")
            out = []
            for i, name in enumerate(PROGRAMS):
                check(lib.socklb_prog_stats(lb, i, st), "program statistics")
                out.append((name, int(st.id), int(st.run_cnt), int(st.run_time_ns)))
            return out

    def terminate_sockets(self, backend_ids: Sequence[int], netns_fds: Sequence[int], tcp: bool) -> Tuple[int, int]:
        """Terminate in each namespace the sockets socklb connected to these
        backends (by :attr:`termination`); returns the sockets destroyed and
        how many of them were TCP."""
        with self.lock:
            lb = self.handle()
            out, out_tcp = ffi.new("uint64_t *"), ffi.new("uint64_t *")
            ids = ffi.new("uint32_t[]", list(backend_ids))
            fds = ffi.new("int[]", list(netns_fds))
            if self.termination == "bpf_sock_destroy":
                rc = lib.socklb_terminate(lb, ids, len(backend_ids), fds, len(netns_fds), int(tcp), out, out_tcp)
            elif self.termination == "sock_diag":
                rc = lib.socklb_diag_terminate(lb, ids, len(backend_ids), fds, len(netns_fds), int(tcp), out, out_tcp)
            else:
                rc = -_errno.EOPNOTSUPP
            check(rc, "terminating sockets connected to removed backends")
            return int(out[0]), int(out_tcp[0])

    def tcp_records(self) -> int:
        """TCP translations held in sock_tcp (slots in use)."""
        with self.lock:
            fd = lib.socklb_map_fd(self.handle(), b"sock_tcp")
            return check(int(lib.socklb_tcp_slots_used(check(int(fd), "sock_tcp"))), "reading sock_tcp")

    def reclaim_tcp(self, netns_fds: Sequence[int]) -> int:
        """Free the sock_tcp slots whose socket is in none of these network
        namespaces (csrc/reclaim.c); how many.  0 without socket iterators."""
        with self.lock:
            lb = self.handle()
            fds = ffi.new("int[]", list(netns_fds))
            rc = int(lib.socklb_reclaim_tcp(lb, fds, len(netns_fds)))
            if rc == -_errno.EOPNOTSUPP:
                return 0
            return check(rc, "reclaiming sock_tcp slots")

    def count_states(self, netns_fds: Sequence[int]) -> int:
        """Per-socket entries held by the sockets of these network namespaces."""
        with self.lock:
            lb = self.handle()
            fds = ffi.new("int[]", list(netns_fds))
            return check(int(lib.socklb_count_states(lb, fds, len(netns_fds))), "counting socket states")


def _check_batch(rc: int, op: str, done: int) -> None:
    """check(), with the number of elements done kept on the exception."""
    try:
        check(rc, op)
    except KernelError as e:
        e.done = done  # type: ignore[attr-defined]
        raise


class Map:
    """One map of a live datapath, with the loader's bulk calls.

    ``owner`` None wraps a file descriptor the caller owns and keeps open
    (a pinned map opened by another tool or a test)."""

    def __init__(self, owner: Optional[Datapath], name: str, fd: int, key_size: int, value_size: int) -> None:
        self._owner = owner
        self._lock = owner.lock if owner is not None else threading.RLock()
        self.name = name
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size

    def _check(self) -> None:
        if self._owner is not None:
            self._owner.handle()

    def update(self, keys: Any, values: Any, n: int, flags: int = 0) -> None:
        if n == 0:
            return
        done = ffi.new("uint32_t *")
        with self._lock:
            self._check()
            rc = lib.socklb_map_update(self.fd, keys, values, n, self.key_size, self.value_size, flags, done)
        _check_batch(rc, f"update of map {self.name} ({done[0]} of {n} written)", done[0])

    def update_rows(self, rows: Any) -> None:
        """Write a planner.Rows (every key in one buffer, every value in another)."""
        if rows.n:
            self.update(ffi.from_buffer(rows.keys), ffi.from_buffer(rows.values), rows.n)

    def delete(self, keys: Sequence[bytes]) -> None:
        n = len(keys)
        if n == 0:
            return
        done = ffi.new("uint32_t *")
        with self._lock:
            self._check()
            rc = lib.socklb_map_delete(self.fd, b"".join(keys), n, self.key_size, done)
        _check_batch(rc, f"delete from map {self.name} ({done[0]} of {n} deleted)", done[0])

    def lookup(self, key: bytes, value_size: Optional[int] = None) -> Optional[bytes]:
        buf = ffi.new("uint8_t[]", value_size or self.value_size)
        with self._lock:
            self._check()
            rc = lib.socklb_map_lookup(self.fd, key, buf)
        if rc == -_errno.ENOENT:
            return None
        check(rc, f"lookup in map {self.name}")
        return bytes(ffi.buffer(buf))

    def keys(self, cap: int) -> List[bytes]:
        ks = self.key_size
        buf = ffi.new("uint8_t[]", max(cap, 1) * ks)
        with self._lock:
            self._check()
            n = check(lib.socklb_map_keys(self.fd, buf, ks, cap), f"walk of map {self.name}")
        raw = bytes(ffi.buffer(buf, n * ks))
        return [raw[i * ks : (i + 1) * ks] for i in range(n)]

    def items(self, cap: int) -> List[Tuple[bytes, bytes]]:
        """Every (key, value), walking at most ``cap`` keys; entries deleted
        during the walk are left out."""
        return [(k, v) for k in self.keys(cap) if (v := self.lookup(k)) is not None]


def write_threads() -> int:
    """Threads a large bulk write uses: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except OSError:  # pragma: no cover - no affinity on this system
        return 1


def update_rows_parallel(jobs: Sequence[Tuple[Map, Any]], threads: int) -> None:
    """Write each ``(map, rows)`` (a planner.Rows) as :meth:`Map.update_rows`
    does, on up to ``threads`` threads at once: the rows are cut into about
    ``threads`` equal parts, each written by one thread with one bulk update
    (the native call runs without the GIL and under the maps' lock).  Every
    part is attempted; a failure raises KernelError for the first failed map
    in the order of ``jobs``, its ``done`` the elements written before the
    first failed part (later parts may have been written too)."""
    jobs = [(m, rows) for m, rows in jobs if rows.n]
    if not jobs:
        return
    total = sum(rows.n for _, rows in jobs)
    share = max(1, -(-total // max(1, threads)))
    pieces: List[Tuple[int, int, int]] = []  # (job, first element, count)
    for j, (_, rows) in enumerate(jobs):
        for start in range(0, rows.n, share):
            pieces.append((j, start, min(share, rows.n - start)))
    order = sorted(range(len(pieces)), key=lambda i: -pieces[i][2])  # longest first
    c = ffi.new("struct socklb_update_job[]", len(pieces))
    keep: List[Any] = []
    for slot, i in enumerate(order):
        j, start, n = pieces[i]
        m, rows = jobs[j]
        kbuf, vbuf = ffi.from_buffer(rows.keys), ffi.from_buffer(rows.values)
        keep += (kbuf, vbuf)
        job = c[slot]
        job.fd, job.n, job.key_size, job.value_size = m.fd, n, m.key_size, m.value_size
        job.keys = ffi.cast("char *", kbuf) + start * m.key_size
        job.values = ffi.cast("char *", vbuf) + start * m.value_size
    with ExitStack() as locks:
        for lock in {id(m._lock): m._lock for m, _ in jobs}.values():
            locks.enter_context(lock)
        for m, _ in jobs:
            m._check()
        rc = lib.socklb_map_update_parallel(c, len(pieces), threads)
    del keep
    check(rc, "starting the threads of a bulk map update")
    result = {i: (int(c[slot].rc), int(c[slot].done)) for slot, i in enumerate(order)}
    for j, (m, rows) in enumerate(jobs):
        done = 0
        for i, (pj, _, _n) in enumerate(pieces):
            if pj != j:
                continue
            err, written = result[i]
            if err < 0:
                _check_batch(err, f"update of map {m.name} ({done + written} of {rows.n} written)", done + written)
            done += written


class LinkSet:
    """The bpf_links of every program on one cgroup (``struct socklb_links *``).

    Destroying it detaches the programs unless the links are pinned; its
    owner's lock guards every call, so a concurrent close never frees
    what another call reads."""

    def __init__(self, owner: Datapath, links: Any, group: int = GROUP_MAIN) -> None:
        self._owner = owner
        self._links: Optional[Any] = links
        self.group = group

    @property
    def alive(self) -> bool:
        return self._links is not None

    def _handle(self, what: str) -> Any:
        if self._links is None:
            raise ClosedError(f"{what}: not attached")
        return self._links

    def program_ids(self, what: str) -> List[int]:
        out = ffi.new("uint32_t *")
        with self._owner.lock:
            links = self._handle(what)
            ids = []
            for i in range(len(GROUP_PROGRAMS[self.group])):
                check(lib.socklb_links_prog_id(links, i, out), "link info")
                ids.append(int(out[0]))
            return ids

    def pin(self, directory: str, what: str) -> None:
        with self._owner.lock:
            check(lib.socklb_links_pin(self._handle(what), directory.encode()), f"pinning the links of {what}")

    def unpin(self) -> None:
        with self._owner.lock:
            if self._links is not None:
                lib.socklb_links_unpin(self._links)

    def close(self) -> bool:
        """Free the handles (detaching unless pinned); False if already done."""
        with self._owner.lock:
            links, self._links = self._links, None
            if links is None:
                return False
            lib.socklb_links_close(links)
            return True
