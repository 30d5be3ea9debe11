"""Sockets stuck on removed backends: finding their namespaces, terminating them.

A connected UDP socket (and, with ``Service(terminate_tcp=True)``, a TCP
one) whose backend was removed or left the active state would keep talking
to it.  The socket iterators of ``csrc/socklb_iter.bpf.c`` destroy the
sockets socklb itself connected to such a backend (``bpf_sock_destroy``,
Linux 6.5).  An iterator walks one network namespace, so they run in the
namespace of every process found in the attached cgroups; backend ids are
handed over in chunks of the iterators' map size.

Also here: reclaiming the sock_tcp slots of TCP sockets that closed while no
release program ran for them (their cgroup had been detached), which needs
every network namespace of the machine (see ``csrc/reclaim.c``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Iterable, List, Optional, Sequence

from socklb._native import lib
from socklb.control.attachment import Attachments
from socklb.datapath.live import Datapath
from socklb.errors import SocklbError

log = logging.getLogger("socklb")

__all__ = ["Terminator", "client_netns", "every_netns", "reclaim_after_detach", "reclaim_tcp", "CHUNK"]

CHUNK: int = lib.SOCKLB_DOOMED_ENTRIES


def client_netns(cgroups: Iterable[str]) -> List[int]:
    """Open fds of the network namespaces of every process in the cgroups
    (and below them), one per namespace."""
    seen = {}
    for cg in cgroups:
        for root, _dirs, files in os.walk(cg):
            if "cgroup.procs" not in files:
                continue
            try:
                with open(os.path.join(root, "cgroup.procs"), encoding="ascii") as f:
                    pids = f.read().split()
            except OSError:
                continue
            for pid in pids:
                path = f"/proc/{pid}/ns/net"
                try:
                    st = os.stat(path)
                    if (st.st_dev, st.st_ino) not in seen:
                        seen[(st.st_dev, st.st_ino)] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue  # the process exited meanwhile
    return list(seen.values())


def every_netns() -> List[int]:
    """Open fds of every network namespace the machine shows, one per
    namespace: those of its processes (/proc/PID/ns/net) and the named ones
    (/run/netns)."""
    seen = {}
    paths = [f"/proc/{p}/ns/net" for p in os.listdir("/proc") if p.isdigit()]
    for d in ("/run/netns", "/var/run/netns"):
        try:
            paths += [os.path.join(d, n) for n in sorted(os.listdir(d))]
        except OSError:
            continue
    for path in paths:
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) not in seen:
                seen[(st.st_dev, st.st_ino)] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # the process exited meanwhile, or the name is not a namespace
    return list(seen.values())


def reclaim_tcp(datapath: Datapath) -> int:
    """Free the sock_tcp slots whose socket closed with no release program
    attached (it was in a cgroup detached since): walks the TCP sockets of
    every network namespace (:func:`every_netns`) and frees the slots whose
    cookie no socket has.  Returns how many; 0 where TCP records live in
    socket-local storage or the kernel has no socket iterators."""
    fds = every_netns()
    try:
        return datapath.reclaim_tcp(fds)
    finally:
        for fd in fds:
            os.close(fd)


class Terminator:
    """Terminates the sockets connected to given backend ids, in the
    namespaces of the processes of ``cgroups()``; counts what it did."""

    def __init__(
        self,
        datapath: Datapath,
        cgroups: Callable[[], Sequence[str]],
        enabled: bool,
        record: Optional[Callable[[int, int], None]] = None,
    ) -> None:
        self._datapath = datapath
        self._record = record
        self._cgroups = cgroups
        self.enabled = enabled
        self._lock = threading.Lock()
        self.terminated = 0
        """Sockets terminated so far."""

    def __call__(self, backend_ids: List[int], tcp: bool) -> int:
        if not self.enabled or not backend_ids:
            return 0
        fds = client_netns(self._cgroups())
        try:
            done = done_tcp = 0
            if fds:
                for i in range(0, len(backend_ids), CHUNK):
                    n, n_tcp = self._datapath.terminate_sockets(backend_ids[i : i + CHUNK], fds, tcp)
                    done, done_tcp = done + n, done_tcp + n_tcp
            with self._lock:
                self.terminated += done
            if done and self._record is not None:
                try:
                    self._record(done, done_tcp)
                except Exception as e:  # a statistic: never fails the clean-up
                    log.warning("socklb: recording %d terminated sockets: %s", done, e)
            return done
        finally:
            for fd in fds:
                os.close(fd)


def reclaim_after_detach(attachments: Attachments, datapath: Datapath, quiet: bool) -> int:
    """:func:`reclaim_tcp` when an attachment was detached since the last
    time (``attachments.detached``), else nothing; ``quiet``: a failure is
    logged, not raised (``attach()`` stands, ``reconcile()`` retries)."""
    if not attachments.detached and quiet:
        return 0
    attachments.detached = False
    try:
        return reclaim_tcp(datapath)
    except SocklbError as e:
        if not quiet:
            raise
        attachments.detached = True
        log.warning("socklb: reclaiming sock_tcp slots: %s", e)
        return 0
