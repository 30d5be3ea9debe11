"""The read side of a balancer: what the datapath counted, chose and holds.

:class:`Observability` is the part of :class:`~socklb.Balancer` that only
reads: counters, selections, raw tables, map usage and memory, program
statistics, per-socket state.  Each method takes the balancer's lock and reads
the kernel's maps; none writes.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, List, Optional, Tuple

from socklb._native import features, lib
from socklb.control import adopt, stats
from socklb.control.attachment import Attachments
from socklb.control.runtime import Runtime
from socklb.control.state import State
from socklb.control.stats import ProgramStats
from socklb.control.terminate import Terminator, client_netns
from socklb.control.writer import Tables
from socklb.datapath.live import Datapath
from socklb.datapath.spec import DatapathSpec, PinPaths
from socklb.model import Service, ServiceKey

__all__ = ["Observability"]


class Observability:
    """Read-only views of a balancer: its limits and properties, what its
    datapath counted and holds (a base of :class:`~socklb.Balancer`)."""

    spec: DatapathSpec
    _lock: threading.RLock
    _rt: Optional[Runtime]
    _tables: Tables
    _state: State
    _attachments: Attachments

    _paths: Optional[PinPaths]
    _datapath: Optional[Datapath]
    _terminator: Terminator

    def _open(self) -> Datapath:
        """The datapath, under the lock; ClosedError after close()."""
        assert self._datapath is not None
        self._datapath.handle()
        return self._datapath

    # -- limits and properties ----------------------------------------------------

    max_services = property(lambda self: self.spec.max_services, doc="Services at once (the limit).")
    max_backends = property(lambda self: self.spec.max_backends, doc="Backends at once, over all services.")
    maglev_size = property(lambda self: self.spec.maglev_size, doc="Entries of each Maglev table.")
    max_maglev_services = property(lambda self: self.spec.max_maglev_services, doc="Maglev services at once.")
    udp_flows_per_socket = property(
        lambda self: self.spec.udp_flows_per_socket, doc="Unconnected-UDP flows each socket remembers."
    )

    @property
    def pin_dir(self) -> Optional[str]:
        return self._paths.root if self._paths else None

    @property
    def terminates_sockets(self) -> bool:
        """Whether sockets connected to a removed backend are terminated
        (the kernel has ``bpf_sock_destroy``, Linux 6.5, or sock_diag's
        SOCK_DESTROY, and it was not turned off); see :attr:`termination`."""
        return self._terminator.enabled

    @property
    def termination(self) -> str:
        """How sockets on removed backends are terminated: ``"bpf_sock_destroy"``
        (socket iterators in the kernel), ``"sock_diag"`` (SOCK_DESTROY from
        user space, kernels before 6.5), or ``"off: <reason>"``."""
        with self._lock:
            dp = self._open()
            if not self._terminator.enabled:
                return "off: " + (dp.termination_reason or "terminate_sockets=False")
            return dp.termination

    @property
    def closed(self) -> bool:
        return self._datapath is None or self._datapath.closed

    def socket_states(self) -> int:
        """How many per-socket entries socklb holds right now: one per socket it
        connected, one per unconnected UDP socket it translated (socket-local
        storage, freed with the socket).  Counted by socket iterators in the
        network namespaces of the processes in the attached cgroups."""
        with self._lock:
            dp = self._open()
            if dp.iter_error:
                f = features.ITER_STORAGE if features.ITER_STORAGE in dp.missing else features.SOCK_DESTROY
                raise f.error(os.strerror(dp.iter_error))
            fds = client_netns(self._attachments.cgroups())
            try:
                return dp.count_states(fds) if fds else 0
            finally:
                for fd in fds:
                    os.close(fd)

    def counters(self) -> Dict[str, int]:
        """Datapath counters summed over CPUs: translations made, refusals, retries."""
        with self._lock:
            self._open()
            # "terminated" comes from the map: pinned, it counts across owners.
            assert self._rt is not None
            return stats.read_counters(self._rt.counters)

    def selections(self) -> Dict[ServiceKey, Dict[Tuple[str, int], int]]:
        """How many times the datapath chose each backend, by service key and
        backend (address, port), summed over CPUs: every ``connect()`` and every
        new unconnected-UDP flow it translated (ClientIP affinity hits
        included; datagrams of a flow that keeps its backend are not choices).
        A backend's count starts again from 0 if it is removed and added back."""
        with self._lock:
            self._open()
            return _service_selections(self._tables, self._state, self.spec.map_entries()["selections"])

    def dump(self) -> Dict[str, Dict[bytes, bytes]]:
        """The raw contents of the service, slot, backend and Maglev maps, by map
        name: packed keys to packed values, as the datapath sees them."""
        with self._lock:
            self._open()
            return _table_dump(self._tables, self.spec.map_entries())

    def kernel_services(self) -> List[Service]:
        """The services the kernel's tables describe, decoded from the maps (what
        a restarted controller would adopt); equal to :meth:`services` except
        while an update is being written."""
        with self._lock:
            self._open()
            return adopt.read_services(self._tables, self.spec)

    def map_usage(self) -> Dict[str, Tuple[int, int]]:
        """Entries in use and capacity (max_entries) of each sized map, by name."""
        with self._lock:
            dp = self._open()
            out = _table_usage(self._tables, self.spec.map_entries())
            out["sock_tcp"] = (dp.tcp_records(), int(lib.SOCKLB_SOCK_TCP_SLOTS))
            return out

    def map_memory(self) -> Dict[str, int]:
        """Kernel memory charged to each of the balancer's maps, in bytes."""
        with self._lock:
            return self._open().map_memory()

    def program_stats(self) -> List[ProgramStats]:
        """Per-program run counts and run time from the kernel's BPF statistics.

        The kernel counts only while ``/proc/sys/kernel/bpf_stats_enabled`` is 1.
        """
        with self._lock:
            return stats.program_stats(self._open())


def _service_selections(t: Tables, state: State, cap: int) -> Dict[ServiceKey, Dict[Tuple[str, int], int]]:
    """Selections by service key and backend (address, port); see Balancer.selections."""
    assert t.selections is not None
    sel = stats.read_selections(t.selections, cap)
    return {k: {be: sel.get(bid, 0) for be, bid in lv.backend_ids.items()} for k, lv in state.services.items()}


def _table_dump(t: Tables, entries: Dict[str, int]) -> Dict[str, Dict[bytes, bytes]]:
    """Raw contents of the service, slot, backend and Maglev maps, by name."""
    e = entries
    return stats.dump(
        {t.services: e["services"], t.slots: e["slots"], t.backends: e["backends"], t.maglev: e["maglev"]}
    )


def _table_usage(t: Tables, entries: Dict[str, int]) -> Dict[str, Tuple[int, int]]:
    """Entries in use and capacity of each sized map of the tables, by name."""
    maps = {"services": t.services, "slots": t.slots, "backends": t.backends, "maglev": t.maglev}
    maps["affinity"] = t.affinity
    if t.selections is not None:
        maps["selections"] = t.selections
    return {name: (len(m.keys(entries[name])), entries[name]) for name, m in maps.items()}
