"""The values: :class:`Backend`, :class:`Affinity` and :class:`Service`, frozen,
slotted and validated when made (see :mod:`socklb.model`).

Constructing them is on a controller's hot path (hundreds of thousands of
backends): the checks they call are plain functions of :mod:`.checks`, bound
as globals of this module, and nothing here imports anything at call time."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, SupportsIndex, Tuple, Union, cast

from socklb.errors import InvalidValueError
from socklb.model.checks import (
    _V4_MAPPED,
    _WILDCARDS,
    _address,
    _enum,
    _frozen,
    _frozen_del,
    _int,
    _port,
    _slotted,
    special_frontend,
)
from socklb.model.kinds import (
    AFFINITY_DEFAULT,
    AFFINITY_MAX,
    AFFINITY_MIN,
    MAX_BACKENDS_PER_SERVICE,
    MAX_WEIGHT,
    Algorithm,
    BackendState,
    Frontend,
    IPAddress,
    Protocol,
    ServiceKey,
)

# First bytes of the frontends special_frontend() may refuse: the usual
# service address pays one set lookup.
_SPECIAL4 = frozenset((0, 127, 169))
_SPECIAL6 = frozenset((0, 0xFE))

__all__ = ["Affinity", "Backend", "Service", "normalize_key"]

# Ports and weights are interned: 500,000 backends on port 8080 share one int
# (an int above 256 is otherwise 32 bytes each).  At most 65,536 of each.
_INTS: Dict[int, int] = {}
_set = object.__setattr__


def _backend_address(b: Backend) -> str:
    """A backend's address text, made from its 16 bytes when asked for: not
    kept, as 500,000 backends would keep 30 MiB of strings."""
    a16 = b._a16
    if a16.startswith(_V4_MAPPED):  # a backend is never an IPv4-mapped IPv6 address: this is IPv4
        return socket.inet_ntop(socket.AF_INET, a16[12:])
    return socket.inet_ntop(socket.AF_INET6, a16)


def _backend_version(b: Backend) -> int:
    """4 or 6, from the 16 bytes (not kept: a fifth slot makes a Backend 16 bytes bigger)."""
    return 4 if b._a16.startswith(_V4_MAPPED) else 6


@_slotted(
    "_a16",
    address=property(_backend_address, doc="The address, normalized (``inet_ntop``)."),
    _version=property(_backend_version, doc="The IP version, 4 or 6."),
)
@dataclass(frozen=False, eq=False, init=False)
class Backend:
    """One endpoint of a service: an address and port, a weight and a state.

    >>> Backend("fd00:244:2::2", 8080, weight=3).weight
    3

    The address is a unicast host's: not unspecified, multicast, the limited
    broadcast address or IPv6 link-local (a backend has no zone to give it).
    Loopback is accepted: it is reached in the client's own network namespace,
    which is the host for a host-network client.

    >>> Backend("fe80::2", 8080)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    socklb.errors.InvalidValueError: address: fe80::2 is IPv6 link-local: ...

    Immutable, hashable and picklable, without a ``__dict__`` (``__slots__``).
    """

    address: str
    port: int
    weight: int = 1
    state: BackendState = BackendState.ACTIVE
    if TYPE_CHECKING:  # slots, not fields (mypy is told they have defaults)
        _a16: bytes = dataclasses.field(default=b"", init=False)  # the address, 16 bytes in network order
        _version: int = dataclasses.field(default=0, init=False)  # 4 or 6 (computed)

    def __init__(
        self,
        address: str,
        port: SupportsIndex,
        weight: SupportsIndex = 1,
        state: Union[str, BackendState] = BackendState.ACTIVE,
    ) -> None:
        a16 = _address(address, "address", backend=True)[1]
        p = _port(port)
        w = _int(weight, 0, MAX_WEIGHT)
        if w is None:
            raise InvalidValueError("weight", f"must be an integer in 0..{MAX_WEIGHT}, not {weight!r}")
        if state.__class__ is not BackendState:
            state = _enum(BackendState, state, "state")
        ints = _INTS
        _set(self, "port", ints.setdefault(p, p))
        _set(self, "weight", ints.setdefault(w, w))
        _set(self, "state", state)
        _set(self, "_a16", a16)

    __setattr__ = _frozen
    __delattr__ = _frozen_del

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not Backend:
            return NotImplemented
        o = other
        return self._a16 == o._a16 and self.port == o.port and self.weight == o.weight and self.state is o.state

    def __hash__(self) -> int:
        # Not kept (8 bytes a backend): a Service keeps the hash of its backends.
        # id(state): the states are singletons, and ``is`` is what __eq__ compares.
        return hash((self._a16, self.port, self.weight, id(self.state)))

    def __reduce__(self) -> Tuple[Any, ...]:
        return (Backend, (self.address, self.port, self.weight, self.state))

    @property
    def _key(self) -> Tuple[str, int]:
        """(address, port): what identifies a backend within a service."""
        return (self.address, self.port)

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    @property
    def usable_when_active(self) -> bool:
        """Whether the datapath may choose this backend while its service has active ones."""
        return self.state is BackendState.ACTIVE and self.weight > 0


def _active_backend(a16: bytes, port: int) -> Backend:
    """``Backend(address, port)`` from the 16 bytes :func:`_address` gave for an
    address it accepted as a backend's, and a port in 1..65535, without checking
    them again: the Kubernetes translation makes half a million at a time from
    endpoints it checked when they arrived."""
    b: Backend = object.__new__(Backend)
    _set(b, "port", _INTS.setdefault(port, port))
    _set(b, "weight", 1)
    _set(b, "state", BackendState.ACTIVE)
    _set(b, "_a16", a16)
    return b


@dataclass(frozen=True)
class Affinity:
    """ClientIP session affinity: a client pod keeps its backend until it has not
    used the service for ``timeout`` seconds (1..86400, default 10800).

    The client is identified by its network namespace (the pod), not by an
    address it could spoof.
    """

    timeout: int = AFFINITY_DEFAULT

    if TYPE_CHECKING:  # what the generated __init__ accepts: any integer type

        def __init__(self, timeout: SupportsIndex = AFFINITY_DEFAULT) -> None: ...

    def __post_init__(self) -> None:
        t = _int(self.timeout, AFFINITY_MIN, AFFINITY_MAX)
        if t is None:
            raise InvalidValueError(
                "affinity.timeout",
                f"must be an integer number of seconds in {AFFINITY_MIN}..{AFFINITY_MAX}, not {self.timeout!r}",
            )
        if t is not self.timeout:
            object.__setattr__(self, "timeout", t)


@_slotted("_a16", "_skey", "_hash")
@dataclass(frozen=False, eq=False, init=False)
class Service:
    """A service address (VIP, port, protocol) and its backends.

    Backends must be of the service's address family; an IPv4 service is also
    reached by IPv6 sockets through its v4-mapped address (``::ffff:10.96.0.10``).
    No backend may have the VIP's address: a socket translated there is not
    translated again.  An invalid backend is named by its position as given:

    >>> Service("10.96.0.10", 80, backends=[Backend("10.244.2.1", 80), Backend("10.96.0.10", 8080)])
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    socklb.errors.InvalidValueError: backends[1]: 10.96.0.10 is the service's own address: ...

    Immutable, hashable and picklable, without a ``__dict__``; its hash is
    computed once and kept, so comparing two services that differ usually
    costs one integer comparison (``Balancer.sync()`` relies on it).
    """

    address: str
    port: int
    protocol: Protocol = Protocol.TCP
    backends: Tuple[Backend, ...] = ()
    algorithm: Algorithm = Algorithm.RANDOM
    affinity: Optional[Affinity] = None
    terminate_tcp: bool = False
    """Also terminate TCP connections to a backend that is removed or leaves the
    active state (UDP sockets connected to one always are)."""
    frontend: Frontend = Frontend.ADDRESS
    """Where the service is reached: see :class:`Frontend` and
    :meth:`node_port`, :meth:`host_port`."""
    if TYPE_CHECKING:  # slots, not fields (mypy is told they have defaults)
        _a16: bytes = dataclasses.field(default=b"", init=False)
        _skey: ServiceKey = dataclasses.field(default=("", 0, ""), init=False)  # .key, made once
        _hash: int = dataclasses.field(default=0, init=False)  # 0: not computed yet

    def __init__(
        self,
        address: str,
        port: SupportsIndex,
        protocol: Union[str, Protocol] = Protocol.TCP,
        backends: Iterable[Backend] = (),
        algorithm: Union[str, Algorithm] = Algorithm.RANDOM,
        affinity: Optional[Affinity] = None,
        terminate_tcp: bool = False,
        frontend: Union[str, Frontend] = Frontend.ADDRESS,
        allow_special_frontend: bool = False,
    ) -> None:
        kind = frontend if frontend.__class__ is Frontend else _enum(Frontend, frontend, "frontend")
        if not isinstance(address, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            # Before any use of it: a list or a mapping is not hashable.
            raise InvalidValueError("address", f"must be an IP address string, not {type(address).__name__}")
        wild = isinstance(address, str) and address in _WILDCARDS
        if wild and kind is Frontend.ADDRESS:
            raise InvalidValueError(
                "address",
                f"{address} is the unspecified address, not a host's: give the service's own unicast address, "
                "or make a frontend on every node address with Service.node_port() or Service.host_port()",
            )
        if kind is Frontend.NODE_PORT and not wild:
            raise InvalidValueError(
                "address",
                f"a NodePort is reached on every node address: its address is 0.0.0.0 or ::, not {address!r} "
                "(Service.node_port() makes one)",
            )
        text, a16, version = _address(address, "address", wildcard=wild)
        if allow_special_frontend is not False and allow_special_frontend is not True:
            raise InvalidValueError(
                "allow_special_frontend", f"must be a bool, not {type(allow_special_frontend).__name__}"
            )
        if not wild and (a16[12] in _SPECIAL4 if a16[:12] == _V4_MAPPED else a16[0] in _SPECIAL6):
            rule = special_frontend(a16)
            if rule is not None and not allow_special_frontend:
                raise InvalidValueError(
                    "address",
                    f"{text} is {rule}; a service there would capture traffic that is not a service's "
                    "(CVE-2020-8554): give a service address, or pass allow_special_frontend=True if that is "
                    "really what is meant",
                )
        port = _port(port)
        proto = protocol if protocol.__class__ is Protocol else _enum(Protocol, protocol, "protocol")
        algo = algorithm if algorithm.__class__ is Algorithm else _enum(Algorithm, algorithm, "algorithm")
        if isinstance(backends, (str, bytes)):
            raise InvalidValueError("backends", "must be an iterable of Backend")
        try:
            bs = backends if backends.__class__ is tuple else tuple(backends)
        except TypeError:
            raise InvalidValueError(
                "backends", f"must be an iterable of Backend, not {type(backends).__name__}"
            ) from None
        bs = cast(Tuple[Backend, ...], bs)
        if len(bs) > MAX_BACKENDS_PER_SERVICE:
            raise InvalidValueError("backends", f"{len(bs)} backends; a service has at most {MAX_BACKENDS_PER_SERVICE}")
        v4 = version == 4
        for i, b in enumerate(bs):
            if b.__class__ is not Backend and not isinstance(b, Backend):
                _duplicate(bs[:i])  # the first error as given is the one named
                raise InvalidValueError(f"backends[{i}]", f"must be a Backend, not {type(b).__name__}")
            if b._a16.startswith(_V4_MAPPED) is not v4:  # b._version != version
                _duplicate(bs[:i])
                raise InvalidValueError(f"backends[{i}]", _family_hint(b, text, version))
            if b._a16 == a16:
                _duplicate(bs[:i])
                raise InvalidValueError(
                    f"backends[{i}]",
                    f"{b.address} is the service's own address: a socket translated to it is not translated "
                    f"again and reaches no server; give the address of a pod or host that serves {text}",
                )
        # Backends are a set: keep them in one canonical order, so that equal
        # sets compare equal and a restarted controller sees what it wrote.
        if len(bs) > 1:
            given, bs = bs, tuple(sorted(bs, key=_backend_order))
            for i in range(1, len(bs)):
                if bs[i]._a16 == bs[i - 1]._a16 and bs[i].port == bs[i - 1].port:
                    _duplicate(given)
        if affinity is not None and not isinstance(affinity, Affinity):
            raise InvalidValueError("affinity", f"must be an Affinity or None, not {type(affinity).__name__}")
        if not isinstance(terminate_tcp, bool):
            raise InvalidValueError("terminate_tcp", f"must be a bool, not {type(terminate_tcp).__name__}")
        _set(self, "address", address if text == address else text)
        _set(self, "port", port)
        _set(self, "protocol", proto)
        _set(self, "backends", bs)
        _set(self, "algorithm", algo)
        _set(self, "affinity", affinity)
        _set(self, "terminate_tcp", terminate_tcp)
        _set(self, "frontend", kind)
        _set(self, "_a16", a16)
        _set(self, "_skey", (self.address, port, proto.value))
        _set(self, "_hash", 0)

    __setattr__ = _frozen
    __delattr__ = _frozen_del

    def __hash__(self) -> int:
        h = self._hash
        if not h:
            # id() of the enum members: they are singletons, and ``is`` is what __eq__ compares.
            h = (
                hash(
                    (
                        self._skey,
                        self.backends,
                        id(self.algorithm),
                        self.affinity,
                        self.terminate_tcp,
                        id(self.frontend),
                    )
                )
                or 1
            )
            _set(self, "_hash", h)  # a benign race: every thread computes the same value
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not Service:
            return NotImplemented
        o = other
        return (
            self.__hash__() == o.__hash__()
            and self._skey == o._skey
            and self.algorithm is o.algorithm
            and self.terminate_tcp == o.terminate_tcp
            and self.frontend is o.frontend
            and self.affinity == o.affinity
            and self.backends == o.backends
        )

    def __reduce__(self) -> Tuple[Any, ...]:
        return (
            Service,
            (
                self.address,
                self.port,
                self.protocol,
                self.backends,
                self.algorithm,
                self.affinity,
                self.terminate_tcp,
                self.frontend,
                True,  # allow_special_frontend: it was validated when made
            ),
        )

    @classmethod
    def node_port(
        cls,
        port: SupportsIndex,
        protocol: Union[str, Protocol] = Protocol.TCP,
        backends: Iterable[Backend] = (),
        *,
        family: int = 4,
        algorithm: Union[str, Algorithm] = Algorithm.RANDOM,
        affinity: Optional[Affinity] = None,
        terminate_tcp: bool = False,
    ) -> Service:
        """A NodePort: the service reached at ``port`` on every address of the
        node (:meth:`Balancer.set_node_addresses <socklb.Balancer.set_node_addresses>`)
        and on loopback from the node's network namespace.  One family per
        Service, like every Service: ``family=6`` for IPv6 backends.

        >>> svc = Service.node_port(30080, backends=[Backend("10.244.2.2", 8080)])
        >>> svc.key, svc.frontend.value
        (('0.0.0.0', 30080, 'tcp'), 'node_port')
        """
        return cls(
            _any_address(family), port, protocol, backends, algorithm, affinity, terminate_tcp, Frontend.NODE_PORT
        )

    @classmethod
    def host_port(
        cls,
        port: SupportsIndex,
        protocol: Union[str, Protocol] = Protocol.TCP,
        backends: Iterable[Backend] = (),
        *,
        address: Optional[str] = None,
        family: int = 4,
        algorithm: Union[str, Algorithm] = Algorithm.RANDOM,
        affinity: Optional[Affinity] = None,
        terminate_tcp: bool = False,
    ) -> Service:
        """A hostPort: ``port`` of the node to a pod, on every node address
        (like a NodePort, without the bind protection) or, given ``address``,
        on that node address only.

        >>> Service.host_port(8443, backends=[Backend("10.244.3.2", 443)], address="192.0.2.10").key
        ('192.0.2.10', 8443, 'tcp')
        """
        where = _any_address(family) if address is None else address
        return cls(where, port, protocol, backends, algorithm, affinity, terminate_tcp, Frontend.HOST_PORT)

    @property
    def wildcard(self) -> bool:
        """Whether the service is reached on every node address (its address is unspecified)."""
        return self.address in _WILDCARDS

    @property
    def key(self) -> ServiceKey:
        """(address, port, protocol): what identifies the service."""
        return self._skey

    @property
    def ip(self) -> IPAddress:
        return ipaddress.ip_address(self.address)

    def selectable(self) -> Tuple[Tuple[Backend, ...], bool]:
        """The backends a new socket may be given, and whether they are the
        terminating fallback: the active ones of non-zero weight, or, when
        none is left, the terminating ones (Kubernetes' terminating-endpoint
        fallback).  Quarantined and maintenance backends are never chosen.

        >>> s = Service("10.96.0.10", 80, backends=[Backend("10.1.0.1", 80, state="terminating")])
        >>> [b.address for b in s.selectable()[0]], s.selectable()[1]
        (['10.1.0.1'], True)
        """
        bs, active = self.backends, BackendState.ACTIVE
        usable = tuple([b for b in bs if b.state is active and b.weight])
        if len(usable) == len(bs) and bs:
            return bs, False
        if usable:
            return usable, False
        fallback = tuple(b for b in self.backends if b.state is BackendState.TERMINATING and b.weight > 0)
        return fallback, bool(fallback)

    def with_backends(self, backends: Iterable[Backend]) -> Service:
        """A copy with other backends."""
        return Service(
            self.address,
            self.port,
            self.protocol,
            backends,
            self.algorithm,
            self.affinity,
            self.terminate_tcp,
            self.frontend,
            True,  # allow_special_frontend: the address is this one's
        )

    def __str__(self) -> str:
        return f"{_hostport(self.address, self.port)}/{self.protocol.value}"


def _any_address(family: object) -> str:
    if family == 4:
        return "0.0.0.0"
    if family == 6:
        return "::"
    raise InvalidValueError("family", f"must be 4 or 6, not {family!r}")


def _family_hint(b: Backend, vip: str, version: int) -> str:
    if version == 6:
        return (
            f"{b.address} is IPv4 but the service {vip} is IPv6: an IPv6 service cannot have IPv4 backends; "
            "make an IPv4 service (an IPv4 VIP) for them, which IPv6 sockets also reach via ::ffff:<vip>"
        )
    return (
        f"{b.address} is IPv6 but the service {vip} is IPv4: an IPv4 service cannot have IPv6 backends; "
        "make an IPv6 service (an IPv6 VIP) for them: a dual-stack service is one Service per family"
    )


def _backend_order(b: Backend) -> Tuple[bytes, int]:
    return (b._a16, b.port)


def _duplicate(backends: Iterable[Backend]) -> None:
    """Raise for the first backend listed twice, named by its position as given."""
    seen = set()
    for i, b in enumerate(backends):
        if (b._a16, b.port) in seen:
            raise InvalidValueError(f"backends[{i}]", f"{_hostport(b.address, b.port)} is listed twice")
        seen.add((b._a16, b.port))


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def normalize_key(key: Union[Service, Tuple[str, SupportsIndex], Tuple[str, SupportsIndex, str]]) -> ServiceKey:
    """A ServiceKey from a Service or an (address, port[, protocol]) tuple, validated."""
    if isinstance(key, Service):
        return key.key
    if not isinstance(key, tuple) or len(key) not in (2, 3):
        raise InvalidValueError("service", f"must be a Service or (address, port, protocol), not {key!r}")
    address = _address(key[0], "address", wildcard=True)[0]
    port = _port(key[1])
    proto = _enum(Protocol, key[2] if len(key) == 3 else "tcp", "protocol")
    return (address, port, proto.value)
