"""The façade: :class:`Balancer` ties the datapath, the planner, the writer,
adoption, termination and statistics together behind one lock.

>>> from socklb import Balancer, Service, Backend
>>> svc = Service("10.96.0.10", 80, backends=[Backend("10.244.2.1", 8080)])
>>> with Balancer() as lb:                        # doctest: +SKIP
...     lb.upsert(svc)
...     att = lb.attach("/sys/fs/cgroup/unified/my-pods")
...     lb.services() == [svc]
True

See the README's "How the code is laid out" for the path of a ``sync()``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from itertools import compress, count
from operator import attrgetter, is_not, itemgetter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import abi, adopt, features, node, pins, planner, stats, writer
from ._core import lib
from .abi import DEFAULT_MAGLEV_SIZE, U32
from .abi import maglev_table as maglev_table
from .attachment import Attachment, Attachments, cgroup_path
from .datapath import Datapath
from .errors import CapacityError, InvalidValueError, MissingFeatureError, NotFoundError, SocklbError
from .model import Algorithm, Protocol, Service, ServiceKey, normalize_key, path_text
from .model import _address as model_address
from .spec import DEFAULT_UDP_FLOWS, DatapathSpec, PinPaths
from .stats import ProgramStats
from .terminate import Terminator, client_netns

__all__ = ["Balancer", "Attachment", "SyncResult", "ProgramStats", "DEFAULT_MAGLEV_SIZE", "maglev_table"]
log = logging.getLogger("socklb")


NODE_ADDRS_MAX = int(lib.SOCKLB_MAX_NODE_ADDRS)


_WILD = ("0.0.0.0", "::")  # the keys' addresses of wildcard frontends (NodePort, hostPort)
_PROTOS = tuple(p.value for p in Protocol)
_WILD_SET = frozenset(_WILD)
_address_of, _port_of = itemgetter(0), itemgetter(1)
_skey_of = attrgetter("_skey")


def _node_address_arg(value: object) -> Union[str, Dict[bytes, str]]:
    """ "discover", or the addresses as {16-byte key: text}, validated."""
    if value == "discover":
        return "discover"
    if isinstance(value, (str, bytes)) or value is None:
        raise InvalidValueError("node_addresses", f"must be an iterable of addresses or 'discover', not {value!r}")
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidValueError("node_addresses", f"must be an iterable of addresses, not {value!r}") from None
    out: Dict[bytes, str] = {}
    for i, a in enumerate(items):
        text, a16, version = model_address(a, f"node_addresses[{i}]", backend=True)
        if (version == 4 and a16[12] == 127) or (version == 6 and a16 == bytes(15) + b"\1"):
            raise InvalidValueError(
                f"node_addresses[{i}]", f"{text} is loopback, which reaches NodePorts from the node's namespace anyway"
            )
        out[a16] = text
    return out


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
        self._datapath: Optional[Datapath] = None
        self._lock_fd: Optional[int] = None
        self._node_fd: Optional[int] = None
        self._node_fd_is_node = True
        netns_path = None if node_netns is None else node.check_netns_path(path_text(node_netns, "node_netns"))
        wanted_addrs = None if node_addresses is None else _node_address_arg(node_addresses)
        spec = DatapathSpec(
            max_services, max_backends, maglev_size, max_maglev_services, max_affinity, udp_flows_per_socket
        )
        if not (terminate_sockets is True or terminate_sockets is False or terminate_sockets == "auto"):
            raise InvalidValueError("terminate_sockets", f"must be True, False or 'auto', not {terminate_sockets!r}")
        if not isinstance(adopt_only, bool):
            raise InvalidValueError("adopt_only", f"must be a bool, not {adopt_only!r}")
        if adopt_only and pin_dir is None:
            raise InvalidValueError("adopt_only", "needs a pin_dir to adopt from")
        paths: Optional[PinPaths] = None
        pinned: Optional[DatapathSpec] = None
        if pin_dir is not None:
            pin_path = os.path.abspath(path_text(pin_dir, "pin_dir"))
            if adopt_only:
                adopt.check_adoptable(pin_path)
            paths = PinPaths(pins.prepare(pin_path))
            self._lock_fd = pins.lock(paths.root)
            try:
                pinned = adopt.read_meta(paths)
                if pinned is None and adopt_only:
                    raise NotFoundError(f"nothing is pinned in {paths.root}")
            except BaseException:
                self._unlock()
                raise
            spec = pinned or spec  # adopting: the pinned maps fix the limits
        try:
            dp = Datapath(spec, paths.root if paths else None)
        except BaseException:
            self._unlock()
            raise
        if terminate_sockets is True and not dp.termination:
            dp.close()
            self._unlock()
            raise features.SOCK_DESTROY.error(dp.termination_reason)
        self.spec = spec
        self._paths = paths
        self._pid = os.getpid()
        self._datapath = dp
        self._lock = dp.lock
        m = dp.map
        self._tables = writer.Tables(
            services=m("services"),
            slots=m("slots"),
            backends=m("backends"),
            maglev=m("maglev"),
            affinity=m("affinity"),
            selections=m("selections"),
        )
        self._node_cfg = m("node_cfg")
        self._node_addrs = m("node_addrs")
        self._wild_ports = m("wild_ports")
        self._wild_words: Dict[int, int] = {}
        self._node_set: Dict[bytes, str] = {}
        self._meta = m("meta")
        self._record = m("attachments")
        self._counters = m("counters")
        self._attachments = Attachments(dp, paths, self._record if paths else None)
        counters = self._counters
        self._terminator = Terminator(
            dp,
            self._attachments.cgroups,
            bool(terminate_sockets) and bool(dp.termination),
            record=lambda n, n_tcp: stats.add_counters(counters, terminated=n, terminated_tcp=n_tcp),
        )
        self._state = planner.State()
        self.write_stats = stats.WriteStats()
        """Durations of this balancer's updates (socklb.metrics reads them)."""
        try:
            self._node_fd = os.open(netns_path or "/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._set_node_netns(pinned is not None and node_netns is None)
            if paths is not None:
                if pinned is None:
                    self._meta.update(U32.pack(0), spec.meta(), 1)
                else:
                    self._adopt(paths)
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

    # -- lifecycle ----------------------------------------------------------------

    def _open(self) -> Datapath:
        """The datapath, under the lock; ClosedError after close()."""
        assert self._datapath is not None
        self._datapath.handle()
        return self._datapath

    def _mutating(self, what: str) -> Datapath:
        dp = self._open()
        if os.getpid() != self._pid:
            raise SocklbError(
                f"{what}: this balancer belongs to process {self._pid}; a forked child may read it but not change it"
            )
        return dp

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            pins.unlock(fd)

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
            self._attachments.close_all(detach_pinned=False)
            dp.close()
            self._state.clear()
            fd, self._node_fd = self._node_fd, None
            if fd is not None:
                os.close(fd)
            if os.getpid() == self._pid:
                self._unlock()

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

    def __enter__(self) -> Balancer:
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
            known = int.from_bytes(self._node_cfg.lookup(U32.pack(0)) or bytes(8), "little")
            if scope == "host-netns-only" and not known:
                node.netns_cookie()  # raises MissingFeatureError (SO_NETNS_COOKIE, 5.14) where that is why
                raise InvalidValueError("scope", "the node's network namespace is not known to this balancer")
            self._attachments.attach(path, scope, excluded)
            return self._attachments.handle(self, path)

    # -- the node ------------------------------------------------------------------

    def _set_node_netns(self, keep_pinned: bool) -> None:
        assert self._node_fd is not None
        try:
            cookie = node.netns_cookie(f"/proc/self/fd/{self._node_fd}")
        except MissingFeatureError as e:
            # Before Linux 5.14: the node's addresses still work; loopback
            # NodePorts and host-netns-only attachments do not (0: no node).
            log.info("%s", e)
            cookie = 0
        self._node_fd_is_node = True
        if keep_pinned:
            raw = self._node_cfg.lookup(U32.pack(0))
            pinned = int.from_bytes(raw or bytes(8), "little")
            if pinned:
                # Adopted without node_netns: the pinned node stays the node.
                self._node_fd_is_node = pinned == cookie
                return
        self._node_cfg.update(U32.pack(0), cookie.to_bytes(8, "little"), 1)

    @property
    def node_netns_cookie(self) -> int:
        """The cookie of the node's network namespace, as the datapath holds it."""
        with self._lock:
            self._open()
            raw = self._node_cfg.lookup(U32.pack(0))
            return int.from_bytes(raw or bytes(8), "little")

    def node_addresses(self) -> List[str]:
        """The node's addresses the wildcard frontends answer on."""
        with self._lock:
            self._open()
            return list(self._node_set.values())

    def set_node_addresses(self, addresses: Iterable[str]) -> None:
        """Make the node's addresses exactly ``addresses`` (unicast IPv4 or
        IPv6; IPv6 link-local is refused, it needs a zone).  NodePorts and
        HostPorts without an address are reached on them from any client,
        and on loopback from the node's network namespace."""
        want = _node_address_arg(addresses)
        assert not isinstance(want, str)
        with self._lock:
            self._mutating("set_node_addresses")
            if len(want) > NODE_ADDRS_MAX:
                raise InvalidValueError("addresses", f"{len(want)} addresses; a node has at most {NODE_ADDRS_MAX}")
            add = {a16: text for a16, text in want.items() if a16 not in self._node_set}
            gone = [a16 for a16 in self._node_set if a16 not in want]
            if add:
                self._node_addrs.update(b"".join(add), U32.pack(1) * len(add), len(add))
            self._node_addrs.delete(gone)
            self._node_set = dict(want)

    def refresh_node_addresses(self) -> List[str]:
        """Read the node's addresses again from its network namespace (with
        pyroute2: every interface's, but loopback and IPv6 link-local) and make
        them the node's addresses; returns them.  Call it when the node's
        addresses change (an agent does on a timer or a netlink event)."""
        with self._lock:
            self._mutating("refresh_node_addresses")
            assert self._node_fd is not None
            if not self._node_fd_is_node:
                raise SocklbError(
                    "refresh_node_addresses: the pinned balancer's node is another network namespace than this "
                    "thread's; open it with Balancer.open(pin_dir, node_netns=...) to read the node's addresses"
                )
            found = node.discover_addresses(f"/proc/self/fd/{self._node_fd}")
            self.set_node_addresses(found)
            return found

    def _sync_wild_ports(self, keys: Optional[Iterable[ServiceKey]] = None) -> None:
        """Set the bit of every port that has a wildcard frontend (wild_ports):
        of every port, or only of the ports of ``keys`` (the services a write
        changed: a port's bit is whether one of its four wildcard keys is
        programmed, so an upsert costs the same with 50,000 services)."""
        if keys is None:
            words: Dict[int, int] = {}
            for k in self._state.services:
                if k[0] in _WILD:
                    words[k[1] >> 6] = words.get(k[1] >> 6, 0) | 1 << (k[1] & 63)
        else:
            keys = list(keys)
            ports = set(map(_port_of, compress(keys, map(_WILD_SET.__contains__, map(_address_of, keys)))))
            if not ports:
                return
            words = dict(self._wild_words)
            live = self._state.services
            for port in ports:
                on = any((a, port, proto) in live for a in _WILD for proto in _PROTOS)
                w, bit = port >> 6, 1 << (port & 63)
                words[w] = words.get(w, 0) | bit if on else words.get(w, 0) & ~bit
                if not words[w]:
                    del words[w]
        changed = [w for w in set(words) | set(self._wild_words) if words.get(w, 0) != self._wild_words.get(w, 0)]
        if changed:
            raw = b"".join(U32.pack(w) for w in changed)
            vals = b"".join(words.get(w, 0).to_bytes(8, "little") for w in changed)
            self._wild_ports.update(raw, vals, len(changed))
        self._wild_words = words

    def attachments(self) -> List[Attachment]:
        """The attachments this balancer made that are still attached."""
        with self._lock:
            return self._attachments.handles(self)

    def _adopt(self, paths: PinPaths) -> None:
        self._state, dirty = adopt.adopt(self._tables, self.spec)
        writer.collect(self._tables, self._state, self._terminator)
        # What the pinned bitmap says, so that _sync_wild_ports rewrites what differs.
        for k, v in self._wild_ports.items(lib.SOCKLB_WILD_PORT_WORDS):
            if int.from_bytes(v, "little"):
                self._wild_words[U32.unpack(k)[0]] = int.from_bytes(v, "little")
        if dirty:
            self._write({s.key: s for s in dirty})
        self._sync_wild_ports()
        self._node_set = {k: abi.addr_text(k) for k in self._node_addrs.keys(NODE_ADDRS_MAX)}
        adopt.adopt_attachments(self._attachments, self._record, paths)

    # -- services ------------------------------------------------------------------

    def services(self) -> List[Service]:
        """The services programmed, in the order they were first added."""
        with self._lock:
            self._open()
            return [lv.service for lv in self._state.services.values()]

    def get(self, key: Union[Service, ServiceKey, Tuple[str, int]]) -> Service:
        """The programmed service with this key; :class:`~socklb.errors.NotFoundError` if none."""
        k = normalize_key(key)
        with self._lock:
            self._open()
            lv = self._state.services.get(k)
            if lv is None:
                raise NotFoundError(f"no service {k}")
            return lv.service

    def _write(self, want: Dict[ServiceKey, Optional[Service]], exclusive: bool = False) -> planner.Plan:
        t0 = time.monotonic()
        ok = False
        try:
            p = planner.plan(self._state, want, self.spec, terminate=self._terminator.enabled, exclusive=exclusive)
            try:
                writer.apply(self._tables, self._state, p, self._terminator)
            finally:
                self._sync_wild_ports(p.live)
            ok = True
            return p
        finally:
            self.write_stats.observe(time.monotonic() - t0, ok)

    def upsert(self, service: Service) -> bool:
        """Add the service or replace the one with the same key.  Returns whether
        anything changed.  Atomic for the datapath."""
        if not isinstance(service, Service):
            raise InvalidValueError("service", f"must be a Service, not {type(service).__name__}")
        with self._lock:
            self._mutating("upsert")
            return self._write({service.key: service}).writes > 0

    def remove(self, key: Union[Service, ServiceKey, Tuple[str, int]]) -> None:
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
        if services is None or isinstance(services, (str, bytes, Service)):
            raise InvalidValueError("services", f"must be an iterable of Service, not {services!r}")
        if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
            raise InvalidValueError("batch", f"must be a positive integer or None, not {batch!r}")
        given = services if isinstance(services, (list, tuple)) else list(services)
        with self._lock:
            self._mutating("sync")
            want = self._positional_changes(given)
            exclusive = want is None
            if want is None:
                want = self._wanted(given)
            if batch is not None and len(want) > batch:
                return self._sync_batches(len(given), want, exclusive, batch)
            p = self._write(want, exclusive=exclusive)
            added = p.added
            updated: List[ServiceKey] = []
            removed: List[ServiceKey] = []
            if len(added) != len(p.live):
                new = set(added)
                for k, lv in p.live.items():
                    if lv is None:
                        removed.append(k)
                    elif k not in new:
                        updated.append(k)
            unchanged = len(given) - len(added) - len(updated)
            return SyncResult(tuple(added), tuple(updated), tuple(removed), unchanged, p.writes)

    def _sync_batches(
        self, n_given: int, want: Dict[ServiceKey, Optional[Service]], exclusive: bool, batch: int
    ) -> SyncResult:
        """sync() in plans of at most ``batch`` services (see :meth:`sync`)."""
        st = self._state
        live = st.services
        maglev, maglev_size = Algorithm.MAGLEV, self.spec.maglev_size
        # Removals first, then updates by growth (shrinking ones first), then new services:
        # the programmed total never exceeds the larger of now and the end state.
        removals: List[ServiceKey] = []
        updates: List[Tuple[int, ServiceKey]] = []
        adds: List[ServiceKey] = []  # keys only: a first sync of 50,000 makes no tuple per service
        n_services, n_backends, n_maglev = len(live), st.n_backends, st.n_maglev
        for k, svc in want.items():
            old = live.get(k)
            if svc is None:
                if old is not None:
                    removals.append(k)
                continue
            if old is not None and old.service == svc and not old.dirty:
                continue
            n_backends += len(svc.backends)
            if svc.algorithm is maglev:
                n_maglev += 1
                if len(svc.backends) > maglev_size:
                    raise CapacityError(f"backends of maglev service {svc}", len(svc.backends), maglev_size)
            if old is None:
                n_services += 1
                adds.append(k)
            else:
                n_backends -= len(old.ids)
                n_maglev -= old.service.algorithm is maglev
                updates.append((len(svc.backends) - len(old.ids), k))
        if exclusive:
            removals.extend(live.keys() - want.keys())
        for k in removals:
            old = live[k]
            n_services -= 1
            n_backends -= len(old.ids)
            n_maglev -= old.service.algorithm is maglev
        self.spec.check_capacity(n_services, n_backends, n_maglev)
        updates.sort(key=lambda u: u[0])
        order = removals + [k for _, k in updates] + adds
        del updates, adds
        added: List[ServiceKey] = []
        updated: List[ServiceKey] = []
        removed: List[ServiceKey] = []
        writes = 0
        get = want.get
        for i in range(0, len(order), batch):
            p = self._write({k: get(k) for k in order[i : i + batch]})
            writes += p.writes
            new_ids = set(p.new_svc_ids)
            for k, lv in p.live.items():
                if lv is None:
                    removed.append(k)
                elif lv.svc_id in new_ids:
                    added.append(k)
                else:
                    updated.append(k)
            del p
        return SyncResult(tuple(added), tuple(updated), tuple(removed), n_given - len(added) - len(updated), writes)

    @staticmethod
    def _wanted(given: Sequence[Service]) -> Dict[ServiceKey, Optional[Service]]:
        """The services by key; InvalidValueError naming the first one that is
        not a Service or is listed twice.  The checks and the index are C loops."""
        if not set(map(type, given)) <= {Service}:
            for i, s in enumerate(given):
                if not isinstance(s, Service):
                    raise InvalidValueError(f"services[{i}]", f"must be a Service, not {type(s).__name__}")
        want: Dict[ServiceKey, Optional[Service]] = dict(zip(map(_skey_of, given), given))
        if len(want) != len(given):
            seen = set()
            for i, s in enumerate(given):
                if s.key in seen:
                    raise InvalidValueError(f"services[{i}]", f"service {s} is listed twice")
                seen.add(s.key)
        return want

    def _positional_changes(self, given: Sequence[Service]) -> Optional[Dict[ServiceKey, Optional[Service]]]:
        """What a controller that passes the same list again, a few entries
        replaced, asks for: the services that are not the very objects
        programmed at their position (in the order first programmed), and the
        keys they replaced that are gone.  One C loop over pointers finds them
        (no hashing, no attribute read).  None when the list is not such a
        list (reordered, many changes, a duplicate, not a Service): then the
        general path decides, and raises for what is invalid."""
        st = self._state
        if len(given) < 1024 or not st.values:
            return None
        cur = list(st.values.values())
        diff = list(compress(count(), map(is_not, given, cur)))
        if len(diff) + abs(len(given) - len(cur)) > max(64, len(given) >> 6):
            return None
        new = [given[i] for i in diff] + list(given[len(cur) :])
        replaced = {cur[i]._skey for i in diff} | {s._skey for s in cur[len(given) :]}
        want: Dict[ServiceKey, Optional[Service]] = {}
        live = st.values
        for s in new:
            if s.__class__ is not Service:
                return None
            k = s._skey
            if k in want or (k in live and k not in replaced):
                return None  # listed twice: the general path names it
            want[k] = s
        for k in replaced:
            if k not in want:
                want[k] = None
        if st.has_dirty():
            for k, lv in st.services.items():
                if lv.dirty and k not in want:
                    want[k] = lv.service
        return want

    def reconcile(self) -> int:
        """Retry the clean-up that an earlier update could not finish (it is
        also retried before every update).  Returns how much is still pending."""
        with self._lock:
            self._mutating("reconcile")
            writer.collect(self._tables, self._state, self._terminator)
            return len(self._state.garbage)

    def pending(self) -> int:
        """Clean-up operations still pending (0 normally); see :meth:`reconcile`."""
        with self._lock:
            self._open()
            return len(self._state.garbage)

    # -- observability -------------------------------------------------------------

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
            return stats.read_counters(self._counters)

    def selections(self) -> Dict[ServiceKey, Dict[Tuple[str, int], int]]:
        """How many times the datapath chose each backend, by service key and
        backend (address, port), summed over CPUs: every ``connect()`` and every
        new unconnected-UDP flow it translated (ClientIP affinity hits
        included; datagrams of a flow that keeps its backend are not choices).
        A backend's count starts again from 0 if it is removed and added back."""
        with self._lock:
            self._open()
            assert self._tables.selections is not None
            sel = stats.read_selections(self._tables.selections, self.spec.map_entries()["selections"])
            return {
                k: {be: sel.get(bid, 0) for be, bid in lv.backend_ids.items()} for k, lv in self._state.services.items()
            }

    def dump(self) -> Dict[str, Dict[bytes, bytes]]:
        """The raw contents of the service, slot, backend and Maglev maps, by map
        name: packed keys to packed values, as the datapath sees them."""
        with self._lock:
            self._open()
            t, e = self._tables, self.spec.map_entries()
            return stats.dump(
                {t.services: e["services"], t.slots: e["slots"], t.backends: e["backends"], t.maglev: e["maglev"]}
            )

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
            self._open()
            t, e = self._tables, self.spec.map_entries()
            maps = {"services": t.services, "slots": t.slots, "backends": t.backends, "maglev": t.maglev}
            maps["affinity"] = t.affinity
            if t.selections is not None:
                maps["selections"] = t.selections
            out = {name: (len(m.keys(e[name])), e[name]) for name, m in maps.items()}
            out["sock_tcp"] = (self._open().tcp_records(), int(lib.SOCKLB_SOCK_TCP_SLOTS))
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

    def __repr__(self) -> str:
        if self.closed:
            return "<Balancer closed>"
        return f"<Balancer services={len(self._state.services)} attachments={len(self._attachments.cgroups())}>"
