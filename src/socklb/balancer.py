"""The façade: :class:`Balancer` ties the datapath, the planner, the writer,
adoption, termination and statistics together behind one lock.

>>> from socklb import Balancer, Service, Backend
>>> svc = Service("10.96.0.10", 80, backends=[Backend("10.244.2.1", 8080)])
>>> with Balancer() as lb:                        # doctest: +SKIP
...     lb.upsert(svc)
...     att = lb.attach("/sys/fs/cgroup/unified/my-pods")
...     lb.services() == [svc]
True

Each method takes the lock and delegates: values are checked in
:mod:`socklb.model`, plans made by :mod:`socklb.control.planner` and written by
:mod:`socklb.control.writer`; the node's maps are :class:`socklb.control.nodes.Node`'s.
See the README's "How the code is laid out" for the path of a ``sync()``.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable, List, Optional, Tuple, Union

from typing_extensions import Self

from socklb._native.abi import U32
from socklb.control import adopt, planner, stats, sync, terminate, writer
from socklb.control.attachment import Attachment, cgroup_path
from socklb.control.encode import maglev_table as maglev_table
from socklb.control.nodes import node_address_arg
from socklb.control.observe import Observability
from socklb.control.runtime import Runtime, open_runtime
from socklb.control.state import State
from socklb.control.stats import ProgramStats
from socklb.control.sync import SyncResult
from socklb.datapath import node, pins
from socklb.datapath.limits import DEFAULT_MAGLEV_SIZE
from socklb.datapath.live import Datapath
from socklb.datapath.spec import DEFAULT_UDP_FLOWS, DatapathSpec, PinPaths
from socklb.errors import InvalidValueError, NotFoundError, SocklbError
from socklb.model import Service, ServiceKey, normalize_key, path_text

__all__ = ["Balancer", "Attachment", "SyncResult", "ProgramStats", "DEFAULT_MAGLEV_SIZE", "maglev_table"]

_Key = Union[Service, ServiceKey, Tuple[str, int]]


class Balancer(Observability):
    """Loads socklb's BPF programs and maps and programs services into them.

    Limits are fixed when the balancer is made; exceeding one raises
    :class:`~socklb.errors.CapacityError` before anything is written.

    :param max_services: services (VIP, port, protocol) at once.
    :param max_backends: service backends at once, summed over services.
    :param maglev_size: entries of each Maglev table, a prime.
    :param max_maglev_services: services that use ``Algorithm.MAGLEV`` at once
        (each table takes ``4 * maglev_size`` bytes of kernel memory).
    :param max_affinity: (client pod, service) affinity entries kept (LRU).
    :param udp_flows_per_socket: (service, backend) flows an unconnected UDP
        socket remembers (default 16, at most 64); a socket that sends to one
        more evicts its oldest flow, whose late replies then show the backend
        (counted: ``counters()["udp_evicted"]``).
    :param terminate_sockets: terminate sockets connected to removed backends
        (True, False or "auto": when the kernel can).
    :param pin_dir: keep the state pinned there (bpffs); see :meth:`open`.
    :param node_netns: the node's network namespace (a path such as
        ``/proc/PID/ns/net`` or ``/run/netns/NAME``); default: the one of the
        thread that makes the balancer.  Loopback reaches NodePorts from
        there, ``bind()`` of a NodePort is refused there, and the
        ``host-netns-only`` scope translates the sockets of that namespace only.
    :param node_addresses: the node's addresses, on which wildcard frontends
        (NodePort, HostPort) answer; ``"discover"`` reads them from
        ``node_netns`` (see :meth:`refresh_node_addresses`); default: none
        (or, adopting, the pinned ones).
    """

    def __init__(
        self,
        *,
        max_services: int = 65536,
        max_backends: int = 262144,
        maglev_size: int = DEFAULT_MAGLEV_SIZE,
        max_maglev_services: int = 1024,
        max_affinity: int = 65536,
        udp_flows_per_socket: int = DEFAULT_UDP_FLOWS,
        terminate_sockets: Union[bool, str] = "auto",
        pin_dir: Union[str, bytes, os.PathLike[str], None] = None,
        adopt_only: bool = False,
        node_netns: Union[str, bytes, os.PathLike[str], None] = None,
        node_addresses: Union[Iterable[str], str, None] = None,
    ) -> None:
        self._rt: Optional[Runtime] = None
        self._datapath: Optional[Datapath] = None
        # 1. every argument checked before anything is opened
        netns_path = None if node_netns is None else node.check_netns_path(path_text(node_netns, "node_netns"))
        wanted_addrs = None if node_addresses is None else node_address_arg(node_addresses)
        spec = DatapathSpec(
            max_services, max_backends, maglev_size, max_maglev_services, max_affinity, udp_flows_per_socket
        )
        if not (terminate_sockets is True or terminate_sockets is False or terminate_sockets == "auto"):
            raise InvalidValueError("terminate_sockets", f"must be True, False or 'auto', not {terminate_sockets!r}")
        if not isinstance(adopt_only, bool):
            raise InvalidValueError("adopt_only", f"must be a bool, not {adopt_only!r}")
        if adopt_only and pin_dir is None:
            raise InvalidValueError("adopt_only", "needs a pin_dir to adopt from")
        # 2. pins locked, datapath loaded, maps bound, the node's namespace open (all undone on failure)
        rt = self._rt = open_runtime(spec, pin_dir, adopt_only, terminate_sockets, netns_path)
        self.spec, self._paths, self._pid = rt.spec, rt.paths, os.getpid()
        self._datapath, self._lock = rt.datapath, rt.datapath.lock
        self._tables, self._node, self._attachments = rt.tables, rt.node, rt.attachments
        self._terminator = rt.terminator
        self._state = State()
        self.write_stats = stats.WriteStats()
        """Durations of this balancer's updates (socklb.ops.metrics reads them)."""
        # 3. the node and the pinned state
        try:
            rt.node.set_netns(rt.adopted and node_netns is None)
            if rt.paths is not None:
                if not rt.adopted:
                    rt.meta.update(U32.pack(0), rt.spec.meta(), 1)
                else:
                    self._adopt(rt.paths)
            if wanted_addrs == "discover":
                self.refresh_node_addresses()
            elif isinstance(wanted_addrs, dict):
                self.set_node_addresses(list(wanted_addrs.values()))
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        pin_dir: Union[str, bytes, os.PathLike[str]],
        *,
        terminate_sockets: Union[bool, str] = "auto",
        node_netns: Union[str, bytes, os.PathLike[str], None] = None,
    ) -> Balancer:
        """Adopt the state pinned in ``pin_dir`` by an earlier balancer (this
        process or another, alive no more): its services, its attachments,
        with this version's programs swapped in atomically.

        The node (``node_netns``, its addresses) is the pinned one unless
        ``node_netns`` is given.

        Raises :class:`~socklb.errors.NotFoundError` if nothing is pinned there,
        :class:`~socklb.errors.IncompatiblePinsError` if the pins have another
        map layout and :class:`~socklb.errors.PinLockedError` if another
        process owns them.
        """
        return cls(pin_dir=pin_dir, terminate_sockets=terminate_sockets, adopt_only=True, node_netns=node_netns)

    # -- lifecycle ----------------------------------------------------------------

    def _mutating(self, what: str) -> Datapath:
        dp = self._open()
        if os.getpid() != self._pid:
            raise SocklbError(
                f"{what}: this balancer belongs to process {self._pid}; a forked child may read it but not change it"
            )
        return dp

    def close(self) -> None:
        """Detach every attachment this balancer made (pinned ones stay, for the
        next owner) and free its programs and maps.

        Idempotent.  Sockets already connected keep their backend; new ones are
        no longer balanced.  In a forked child it only lets go of the child's
        copies of the handles.
        """
        dp = self._datapath
        if dp is None:
            return
        with dp.lock:
            assert self._rt is not None
            self._rt.close(unlock=os.getpid() == self._pid)
            self._state.clear()

    def destroy(self) -> None:
        """Detach everything, remove the pins this balancer owns and close.
        Without a pin directory this is :meth:`close`."""
        with self._lock:
            self._mutating("destroy")
            self._attachments.close_all(detach_pinned=True)
            paths, self._paths = self._paths, None
            try:
                if paths is not None:
                    pins.remove(paths.root)
            finally:
                self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        dp = getattr(self, "_datapath", None)
        if dp is None or dp.closed:
            return
        if self._attachments.unpinned() and os.getpid() == self._pid:
            warnings.warn(
                f"an attached Balancer was dropped without close(): detaching from {self._attachments.cgroups()}",
                ResourceWarning,
                stacklevel=2,
            )
        self.close()

    # -- attachments ---------------------------------------------------------------

    def attach(
        self,
        cgroup_path_: Union[str, bytes, os.PathLike[str]],
        scope: str = "all",
        exclude: Iterable[Union[str, bytes, os.PathLike[str]]] = (),
    ) -> Attachment:
        """Balance the sockets of every process in ``cgroup_path`` (a cgroup v2
        directory) and its descendants.  Returns the :class:`Attachment` that owns it.

        :param scope: ``"all"``, or ``"host-netns-only"``: translate only the
            sockets of the node's network namespace (``node_netns``), so that
            pods below the cgroup dial what they dial (a sidecar mesh sees
            the VIP as the original destination).
        :param exclude: cgroups below ``cgroup_path`` whose sockets are left
            untranslated (pods with a sidecar); see :meth:`Attachment.exclude`.
        """
        path = cgroup_path(cgroup_path_)
        if isinstance(exclude, (str, bytes)):
            raise InvalidValueError("exclude", "must be a list of cgroup paths, not one path")
        excluded = [cgroup_path(x) for x in exclude]
        with self._lock:
            self._mutating("attach")
            known = self._node.cookie()
            if scope == "host-netns-only" and not known:
                node.netns_cookie()  # raises MissingFeatureError (SO_NETNS_COOKIE, 5.14) where that is why
                raise InvalidValueError("scope", "the node's network namespace is not known to this balancer")
            self._attachments.attach(path, scope, excluded)
            # Records left by sockets that closed while a cgroup was detached.
            terminate.reclaim_after_detach(self._attachments, self._open(), quiet=True)
            return self._attachments.handle(self, path)

    # -- the node ------------------------------------------------------------------

    @property
    def node_netns_cookie(self) -> int:
        """The cookie of the node's network namespace, as the datapath holds it."""
        with self._lock:
            self._open()
            return self._node.cookie()

    def node_addresses(self) -> List[str]:
        """The node's addresses the wildcard frontends answer on."""
        with self._lock:
            self._open()
            return self._node.addresses()

    def set_node_addresses(self, addresses: Iterable[str]) -> None:
        """Make the node's addresses exactly ``addresses`` (unicast IPv4 or
        IPv6; IPv6 link-local is refused, it needs a zone).  NodePorts and
        HostPorts without an address are reached on them from any client,
        and on loopback from the node's network namespace."""
        want = node_address_arg(addresses)
        assert not isinstance(want, str)
        with self._lock:
            self._mutating("set_node_addresses")
            self._node.set_addresses(want)

    def refresh_node_addresses(self) -> List[str]:
        """Read the node's addresses again from its network namespace (with
        pyroute2: every interface's, but loopback and IPv6 link-local) and make
        them the node's addresses; returns them.  Call it when the node's
        addresses change (an agent does on a timer or a netlink event)."""
        with self._lock:
            self._mutating("refresh_node_addresses")
            found = self._node.discover()
            self.set_node_addresses(found)
            return found

    def attachments(self) -> List[Attachment]:
        """The attachments this balancer made that are still attached."""
        with self._lock:
            return self._attachments.handles(self)

    def _adopt(self, paths: PinPaths) -> None:
        self._state, dirty = adopt.adopt(self._tables, self.spec)
        writer.collect(self._tables, self._state, self._terminator)
        self._node.adopt()
        if dirty:
            self._write({s.key: s for s in dirty})
        self._node.sync_wild_ports(self._state.services)
        assert self._rt is not None
        adopt.adopt_attachments(self._attachments, self._rt.record, paths)

    # -- services ------------------------------------------------------------------

    def services(self) -> List[Service]:
        """The services programmed, in the order they were first added."""
        with self._lock:
            self._open()
            return [lv.service for lv in self._state.services.values()]

    def get(self, key: _Key) -> Service:
        """The programmed service with this key; :class:`~socklb.errors.NotFoundError` if none."""
        k = normalize_key(key)
        with self._lock:
            self._open()
            lv = self._state.services.get(k)
            if lv is None:
                raise NotFoundError(f"no service {k}")
            return lv.service

    def _write(self, want: sync.Wanted, exclusive: bool = False) -> planner.Plan:
        t = (self._tables, self._terminator, self._node, self.write_stats)
        return writer.write(self._state, want, self.spec, *t, exclusive)

    def upsert(self, service: Service) -> bool:
        """Add the service or replace the one with the same key.  Returns whether
        anything changed.  Atomic for the datapath."""
        if not isinstance(service, Service):
            raise InvalidValueError("service", f"must be a Service, not {type(service).__name__}")
        with self._lock:
            self._mutating("upsert")
            return self._write({service.key: service}).writes > 0

    def remove(self, key: _Key) -> None:
        """Remove a service, given as a Service or its (address, port, protocol) key."""
        k = normalize_key(key)
        with self._lock:
            self._mutating("remove")
            if k not in self._state.services:
                raise NotFoundError(f"no service {k}")
            self._write({k: None})

    def sync(self, services: Iterable[Service], *, batch: Optional[int] = None) -> SyncResult:
        """Make the programmed services exactly ``services``, with the fewest map
        writes; unchanged services are not touched.  Returns what changed.

        ``batch`` bounds the memory a large change takes: at most that many
        services are planned and written at a time (the removals first, then
        the services that shrink, then the ones that grow or are new), instead
        of all of them in one plan, whose map rows for 50,000 new services are
        tens of MiB.  Each service is still replaced atomically and the
        capacity is checked for the end state before anything is written; but
        if a write fails part way (a kernel error), the batches before it stay
        written."""
        given = sync.checked(services, batch)
        with self._lock:
            self._mutating("sync")
            want = sync.positional_changes(self._state, given)
            exclusive = want is None
            if want is None:
                want = sync.wanted(given)
            if batch is not None and len(want) > batch:
                return sync.batched(self._write, self._state, self.spec, len(given), want, exclusive, batch)
            return sync.result(self._write(want, exclusive=exclusive), len(given))

    def apply(
        self, upserts: Iterable[Service] = (), removals: Iterable[_Key] = (), *, missing_ok: bool = False
    ) -> SyncResult:
        """Add or replace ``upserts`` and remove ``removals`` (services or keys) in one plan, leaving
        the services not named alone; returns what changed.  All or nothing, as :meth:`sync`: a key
        named twice or upserted and removed (InvalidValueError), a removal not programmed (NotFoundError
        as from :meth:`remove`, unless ``missing_ok``) and the capacity are checked before any write.

        >>> a, b = (Service(f"10.96.0.{i}", 80, backends=[Backend("10.244.1.2", 8080)]) for i in (10, 11))
        >>> with Balancer() as lb:                        # doctest: +SKIP
        ...     r = lb.sync([a])
        ...     lb.apply(upserts=[b], removals=[a.key]).removed, lb.services() == [b]
        ((('10.96.0.10', 80, 'tcp'),), True)
        """
        want = sync.batch(upserts, removals)
        with self._lock:
            self._mutating("apply")
            upserted = sync.check_removals(self._state, want, missing_ok)
            return sync.result(self._write(want), upserted)

    def reconcile(self) -> int:
        """Retry the clean-up that an earlier update could not finish (it is
        also retried before every update), and free the TCP records of sockets
        that closed while their cgroup was detached (no release program ran
        for them; attach() does it too after a detach).  Returns how much is
        still pending."""
        with self._lock:
            self._mutating("reconcile")
            writer.collect(self._tables, self._state, self._terminator)
            terminate.reclaim_after_detach(self._attachments, self._open(), quiet=False)
            return len(self._state.garbage)

    def pending(self) -> int:
        """Clean-up operations still pending (0 normally); see :meth:`reconcile`."""
        with self._lock:
            self._open()
            return len(self._state.garbage)

    def __repr__(self) -> str:
        if self.closed:
            return "<Balancer closed>"
        return f"<Balancer services={len(self._state.services)} attachments={len(self._attachments.cgroups())}>"
