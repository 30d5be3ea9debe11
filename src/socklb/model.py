"""Values that describe services: :class:`Service`, :class:`Backend`, :class:`Affinity`.

They are frozen and validated when made; an invalid field raises
:class:`~socklb.errors.InvalidValueError` (a :class:`ValueError`) naming it.

>>> svc = Service("10.96.0.10", 80, backends=[Backend("10.244.2.1", 8080)])
>>> svc.key
('10.96.0.10', 80, 'tcp')
>>> Backend("10.244.2.1", 0)
Traceback (most recent call last):
...
socklb.errors.InvalidValueError: port: must be an integer in 1..65535, not 0
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import operator
import os
import socket
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    Optional,
    SupportsIndex,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
)

from socklb.errors import InvalidValueError

__all__ = [
    "Affinity",
    "Algorithm",
    "Backend",
    "BackendState",
    "Frontend",
    "Protocol",
    "Service",
    "ServiceKey",
    "MAX_WEIGHT",
    "MAX_BACKENDS_PER_SERVICE",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
ServiceKey = Tuple[str, int, str]
"""A service's identity: (VIP, port, protocol), as in ``Service.key``."""

MAX_WEIGHT = 65535
MAX_BACKENDS_PER_SERVICE = 65536
AFFINITY_MIN, AFFINITY_MAX, AFFINITY_DEFAULT = 1, 86400, 10800


class Protocol(str, enum.Enum):
    TCP = "tcp"
    UDP = "udp"


class Algorithm(str, enum.Enum):
    """How a service picks a backend for a new socket.

    ``random`` (the default): random in proportion to each backend's weight
    (an alias table: one draw and one map lookup; uniform at today's cost when
    all weights are equal; weight 0 drains a backend);
    ``weighted``: an alias of ``random``, kept so that existing callers work
    (both honour weights; the service remembers which name it was given);
    ``maglev``: Maglev consistent hashing of the socket, weighted, so a flow's
    choice survives changes to the backend set (about 1/N of flows move when one
    of N backends comes or goes).
    """

    RANDOM = "random"
    WEIGHTED = "weighted"
    MAGLEV = "maglev"


class Frontend(str, enum.Enum):
    """Where a service is reached.

    ``address``: at its own address and port (a ClusterIP, an external IP, a
    load balancer's IP): the default.
    ``node_port``: at its port on every address of the node, and on loopback
    from the node's own network namespace (a Kubernetes NodePort): its address
    is the unspecified one of its family (``0.0.0.0`` or ``::``), and a
    ``bind()`` of its port on the node is refused with ``EADDRINUSE``.
    ``host_port``: one port of the node to a pod (a Kubernetes hostPort): on
    every address of the node like a NodePort when its address is unspecified,
    else on that one address; binds are not refused.
    """

    ADDRESS = "address"
    NODE_PORT = "node_port"
    HOST_PORT = "host_port"


class BackendState(str, enum.Enum):
    """Kubernetes endpoint conditions, as socklb uses them.

    ``active`` backends are chosen; ``terminating`` ones only when a service has
    no active backend left; ``quarantined`` and ``maintenance`` ones are kept in
    the tables but never chosen.
    """

    ACTIVE = "active"
    TERMINATING = "terminating"
    QUARANTINED = "quarantined"
    MAINTENANCE = "maintenance"


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _pton(family: int, text: str) -> Optional[bytes]:
    try:
        return socket.inet_pton(family, text)
    except OSError:
        return None


_WILDCARDS = {"0.0.0.0", "::"}


def _address(value: object, name: str, backend: bool = False, wildcard: bool = False) -> Tuple[str, bytes, int]:
    """Validate an address: (normalized text, 16 bytes in network order with
    IPv4 as ::ffff:a.b.c.d, IP version).  inet_pton, not ipaddress: a
    controller builds hundreds of thousands of these, so the usual addresses
    pass with one test of the first byte.

    Refused for services and backends: the unspecified address and multicast.
    Refused for backends only: 255.255.255.255 and IPv6 link-local (fe80::/10).
    Accepted: loopback (a backend there is reached in the client's own network
    namespace: the host for a host-network client, the pod itself for a pod),
    IPv4 link-local (no zone needed) and 240.0.0.0/4 (Linux routes it as
    unicast and clusters use it for pods)."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidValueError(name, f"must be an IP address string, not {type(value).__name__}")
    if wildcard and value in _WILDCARDS:
        return (value, _V4_MAPPED + bytes(4), 4) if value == "0.0.0.0" else (value, bytes(16), 6)
    raw = _pton(socket.AF_INET, value)
    if raw is not None:
        text, a16 = socket.inet_ntop(socket.AF_INET, raw), _V4_MAPPED + raw
        if raw[0] == 0 or raw[0] >= 224:
            _check_special4(raw, text, name, backend)
        return text, a16, 4
    raw = _pton(socket.AF_INET6, value)
    if raw is None:
        if "%" in value:
            raise InvalidValueError(
                name,
                f"{value!r} has a zone (%...), which socklb addresses cannot carry; "
                "give a global or unique-local address",
            )
        raise InvalidValueError(name, f"{value!r} is not an IPv4 or IPv6 address")
    if raw[0] == 0 or raw[0] >= 0xFE:
        _check_special6(raw, value, name, backend)
    return socket.inet_ntop(socket.AF_INET6, raw), raw, 6


def _check_special4(raw: bytes, text: str, name: str, backend: bool) -> None:
    if raw == b"\0\0\0\0":
        what = "the backend's" if backend else "the service's"
        raise InvalidValueError(
            name, f"{text} is the unspecified address, not a host's: give {what} own unicast address"
        )
    if 224 <= raw[0] <= 239:
        raise InvalidValueError(
            name, f"{text} is a multicast address: services and backends are unicast hosts; give a unicast address"
        )
    if backend and raw == b"\xff\xff\xff\xff":
        raise InvalidValueError(
            name,
            f"{text} is the limited broadcast address: a connect() to it fails and a datagram reaches every host "
            "on the link; give the backend's unicast address",
        )


def _check_special6(raw: bytes, value: str, name: str, backend: bool) -> None:
    if raw == bytes(16):
        what = "the backend's" if backend else "the service's"
        raise InvalidValueError(name, f":: is the unspecified address, not a host's: give {what} own unicast address")
    if raw[:12] == _V4_MAPPED:
        v4 = socket.inet_ntop(socket.AF_INET, raw[12:])
        if backend:
            raise InvalidValueError(
                name,
                f"{value} is IPv4-mapped, an IPv4 backend: give {v4} and put it in an IPv4 service, which IPv6 "
                "sockets also reach via ::ffff:<vip> (an IPv6 service cannot have IPv4 backends)",
            )
        raise InvalidValueError(
            name, f"{value} is IPv4-mapped: give the IPv4 address {v4}; v6 sockets reach it through ::ffff:"
        )
    text = socket.inet_ntop(socket.AF_INET6, raw)
    if raw[0] == 0xFF:
        raise InvalidValueError(
            name, f"{text} is a multicast address: services and backends are unicast hosts; give a unicast address"
        )
    if backend and raw[0] == 0xFE and raw[1] & 0xC0 == 0x80:
        raise InvalidValueError(
            name,
            f"{text} is IPv6 link-local: it is only meaningful with a zone (an interface), which a backend "
            "cannot carry; give the backend's global or unique-local (fd00::/8) address",
        )


def _int(value: object, lo: int, hi: int) -> Optional[int]:
    """``value`` as a plain int if it is an integer in lo..hi, else None.

    Any integer type is accepted through ``__index__`` (numpy integers, an
    IntEnum) and stored as a plain int; bool is not an integer here."""
    if type(value) is int:
        i = value
    elif isinstance(value, bool):
        return None
    else:
        # Not isinstance(value, SupportsIndex): a runtime protocol check costs
        # microseconds.  int.__int__ makes a plain int of an int subclass.
        try:
            i = int.__int__(operator.index(cast(SupportsIndex, value)))
        except TypeError:  # no __index__, or one that refuses (numpy's bool)
            return None
    return i if lo <= i <= hi else None


def _port(value: object, name: str = "port") -> int:
    port = _int(value, 1, 65535)
    if port is None:
        raise InvalidValueError(name, f"must be an integer in 1..65535, not {value!r}")
    return port


E = TypeVar("E", bound=enum.Enum)


def _enum(cls: Type[E], value: object, name: str) -> E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)
        raise InvalidValueError(name, f"{value!r} is not one of {allowed}") from None


_T = TypeVar("_T")


def _slotted(*private: str, **computed: property) -> Callable[[Type[_T]], Type[_T]]:
    """Give a dataclass ``__slots__`` (its fields plus ``private``), as
    ``dataclass(slots=True)`` does on Python 3.10+: a value then has no
    ``__dict__`` (a Backend takes ~80 bytes instead of ~400).  A field named
    in ``computed`` is not stored but computed by that property.  The class
    stays a dataclass (``dataclasses.fields``, ``replace`` and ``asdict`` work)."""

    def make(cls: Type[_T]) -> Type[_T]:
        names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        ns = {k: v for k, v in cls.__dict__.items() if k not in names and k not in ("__dict__", "__weakref__")}
        ns["__slots__"] = tuple(n for n in names if n not in computed) + private
        ns.update(computed)
        meta: Any = type(cls)
        new: Type[_T] = meta(cls.__name__, cls.__bases__, ns)
        new.__qualname__ = cls.__qualname__
        return new

    return make


def _frozen(self: object, name: str, value: object = None) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_del(self: object, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


# Ports and weights are interned: 500,000 backends on port 8080 share one int
# (an int above 256 is otherwise 32 bytes each).  At most 65,536 of each.
_INTS: Dict[int, int] = {}
_new = object.__new__
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
    b: Backend = _new(Backend)
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
    ) -> None:
        kind = frontend if frontend.__class__ is Frontend else _enum(Frontend, frontend, "frontend")
        wild = address in _WILDCARDS
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


def path_text(value: object, name: str) -> str:
    """A path given as str, bytes or os.PathLike, as str (bytes decoded with
    the filesystem encoding); InvalidValueError naming ``name`` otherwise."""
    if isinstance(value, (bytes, bytearray)):
        return os.fsdecode(bytes(value))
    if isinstance(value, os.PathLike):
        return os.fsdecode(os.fspath(value))
    if not isinstance(value, str):
        raise InvalidValueError(name, f"must be a path (str, bytes or os.PathLike), not {value!r}")
    return value


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
