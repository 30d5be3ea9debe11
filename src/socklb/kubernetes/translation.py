"""Kubernetes Services and EndpointSlices to :class:`socklb.Service` values, by kube-proxy's rules.

:func:`translate` is pure: no cluster, no root, no kernel.  Its inputs are
Service and EndpointSlice (``discovery.k8s.io/v1``) objects in the API's JSON
form (dicts with camelCase keys, as ``kubectl get -o json`` prints them, or a
whole ``...List`` with ``items``) or the official client's model objects
(converted with ``ApiClient().sanitize_for_serialization``, so the
``kubernetes`` package is imported only when such an object is given).

>>> from socklb.kubernetes import Node, translate
>>> svc = {"metadata": {"name": "web", "namespace": "default"},
...        "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}}
>>> eps = {"metadata": {"name": "web-x1", "namespace": "default",
...                     "labels": {"kubernetes.io/service-name": "web"}},
...        "addressType": "IPv4",
...        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
...        "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-a"},
...                      {"addresses": ["10.244.2.7"], "conditions": {"ready": False}}]}
>>> [out] = translate([svc], [eps], Node("node-a"))
>>> out.key, [(b.address, b.port, b.state.value) for b in out.backends]
(('10.96.0.20', 80, 'tcp'), [('10.244.1.5', 8080, 'active')])

The rules (kube-proxy's ``pkg/proxy``: servicechangetracker, endpointslicecache,
topology), each with a test in ``tests/test_kubernetes_translate.py``:

- Services skipped: ``clusterIP`` ``None`` or empty (headless), ``type:
  ExternalName``, the label ``service.kubernetes.io/headless``, and the label
  ``service.kubernetes.io/service-proxy-name``: with ``proxy_name=None`` every
  Service carrying it is skipped (it belongs to another proxy); with a
  ``proxy_name`` only Services whose label equals it are taken, as a replacement
  proxy does (Services without the label are kube-proxy's).
- Slices skipped: the label ``service.kubernetes.io/headless``, no
  ``kubernetes.io/service-name`` label, ``addressType: FQDN``.
- Frontends: every ``clusterIPs`` entry (``clusterIP`` when ``clusterIPs`` is
  absent), every ``externalIPs`` entry and every ``status.loadBalancer.ingress[].ip``
  whose ``ipMode`` is ``VIP`` or unset, each with every Service port.  Each
  frontend gets the endpoints of its own address family (dual-stack).  A frontend
  claimed by two Services goes to the first by namespace/name; the other is logged.
- Ports join on (port name, protocol); the backend port is the slice's number.
  Slice ports without a number are ignored.  TCP and UDP are balanced; SCTP ports
  are skipped with a log line.
- Endpoints: all slices of a Service are merged, deduplicated by address:port
  (the first slice by name wins, unless a later one says the endpoint is on this
  node, as in kube-proxy); only ``addresses[0]`` counts; an address of the other
  family than its slice's ``addressType`` is dropped.  Conditions: nil ``ready``
  and nil ``serving`` mean true, nil ``terminating`` means false.
- Cluster policy: ready endpoints (after the topology filter) as ``ACTIVE``; if
  there are none, the serving and terminating ones as ``TERMINATING``
  (KEP-1669); otherwise no backends.
- ``internalTrafficPolicy: Local`` (cluster IPs): the ready endpoints whose
  ``nodeName`` is this node, else the local serving+terminating ones.  A Service
  with usable endpoints elsewhere but none here gets **no backends**, so a
  ``connect()`` fails at once with ECONNREFUSED.  This differs from kube-proxy on
  purpose: kube-proxy drops such packets and the client hangs until its timeout.
  These frontends are listed in :attr:`Translation.no_local_endpoints`.
- NodePorts: a ``type: NodePort`` or ``LoadBalancer`` Service's ``ports[].nodePort``
  is a :meth:`socklb.Service.node_port` frontend (reached on every address of the
  node, and on loopback from the node's network namespace) for each address family
  of its cluster IPs, with the endpoints of that family.  Only a nodePort present
  in the object counts: ``allocateLoadBalancerNodePorts: false`` means the API
  server allocated none (a nodePort the user asked for explicitly is kept by the
  API, and served, as kube-proxy does).  The other Service types' nodePorts are
  ignored.  A nodePort is an external frontend for the traffic policy (next rule).
- ``externalTrafficPolicy`` does not restrict external frontends by default: a
  socket load balancer only ever sees connections made on this node (by its pods
  or the host), and kube-proxy sends exactly that traffic, pod- or
  host-originated, to externalIPs and load-balancer IPs of a ``Local`` Service
  through the cluster-wide endpoints (kubernetes PR 77523).  Pass
  ``apply_external_traffic_policy=True`` to apply ``Local`` to the external
  frontends of NodePort and LoadBalancer Services as ``internalTrafficPolicy``
  applies to cluster IPs.
- Topology, from the hints alone as current kube-proxy decides: node hints
  (``hints.forNodes``) when every ready endpoint has one and one names this node;
  else zone hints (``hints.forZones``) when every ready endpoint has one and one
  names this node's zone; else no filter.  Unready endpoints do not count.  Local
  policies ignore hints.
- ``sessionAffinity: ClientIP`` gives ``Affinity(timeout)`` with
  ``sessionAffinityConfig.clientIP.timeoutSeconds`` or 10800.
- A malformed object (a missing or mistyped field, a bad address) is skipped with
  a logged reason naming it (logger ``socklb.kubernetes``): a whole Service or
  slice when its own fields are wrong, else only the port, frontend or endpoint
  that is.  Nothing raises for bad input, and one bad object never removes
  another Service.
"""

from __future__ import annotations

import logging
import sys
from collections import abc
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from socklb.errors import InvalidValueError
from socklb.model import _V4_MAPPED, Affinity, Algorithm, Backend, BackendState, Service, ServiceKey
from socklb.model import _active_backend as active_backend
from socklb.model import _address as model_address

__all__ = [
    "LABEL_HEADLESS",
    "LABEL_SERVICE_NAME",
    "LABEL_SERVICE_PROXY_NAME",
    "LABEL_ZONE",
    "Node",
    "Note",
    "SliceRead",
    "Translation",
    "as_dict",
    "read_slice",
    "translate",
    "translate_with_notes",
]

logger = logging.getLogger("socklb.kubernetes")

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_ZONE = "topology.kubernetes.io/zone"
DEFAULT_AFFINITY_TIMEOUT = 10800

_NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
_EMPTY: Mapping[str, Any] = {}


class _Malformed(Exception):
    """A field of an API object is missing or of the wrong type; the message says which."""


@dataclass(frozen=True)
class Node:
    """The node this agent programs: its name (matched against an endpoint's
    ``nodeName``), its zone (the ``topology.kubernetes.io/zone`` label) and its
    addresses (for NodePort frontends, later).

    >>> Node("node-a", zone="zone-1")
    Node(name='node-a', zone='zone-1', addresses=())
    >>> Node.from_object({"metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z"}},
    ...                   "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.4"},
    ...                                            {"type": "Hostname", "address": "n1"}]}})
    Node(name='n1', zone='z', addresses=('192.168.0.4',))
    """

    name: str
    zone: Optional[str] = None
    addresses: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidValueError("name", f"must be a non-empty string, not {self.name!r}")
        if self.zone is not None and not isinstance(self.zone, str):
            raise InvalidValueError("zone", f"must be a string or None, not {self.zone!r}")
        if isinstance(self.addresses, str):
            raise InvalidValueError("addresses", "must be a sequence of address strings, not a string")
        addresses = tuple(self.addresses)
        for a in addresses:
            if not isinstance(a, str):
                raise InvalidValueError("addresses", f"must hold address strings, not {a!r}")
        object.__setattr__(self, "addresses", addresses)
        if self.zone == "":
            object.__setattr__(self, "zone", None)

    @classmethod
    def from_object(cls, obj: Any) -> Node:
        """The Node from a Kubernetes Node object (a dict or a client model):
        its name, zone label and InternalIP/ExternalIP addresses."""
        d = as_dict(obj)
        if d is None:
            raise InvalidValueError("node", f"not a Node object: {type(obj).__name__}")
        try:
            meta = _mapping(d.get("metadata"), "metadata")
            name = _nonempty_str(meta.get("name"), "metadata.name")
            labels = _labels(meta)
            zone = labels.get(LABEL_ZONE)
            addresses = []
            status = _mapping(d.get("status"), "status", optional=True)
            for i, a in enumerate(_list(status.get("addresses"), "status.addresses")):
                a = _mapping(a, f"status.addresses[{i}]")
                if a.get("type") in _NODE_ADDRESS_TYPES and isinstance(a.get("address"), str):
                    addresses.append(a["address"])
        except _Malformed as e:
            raise InvalidValueError("node", str(e)) from None
        return cls(name, zone, tuple(addresses))


@dataclass(frozen=True)
class Note:
    """Something :func:`translate` skipped or changed, as it was logged.

    ``kind`` is ``"Service"`` or ``"EndpointSlice"``, ``name`` the object's
    ``namespace/name`` (or its position in the input when it has none),
    ``reason`` what was skipped and why, ``level`` the logging level used.
    """

    kind: str
    name: str
    reason: str
    level: int = logging.WARNING

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.reason}"


@dataclass
class Translation:
    """What :func:`translate_with_notes` returns.

    ``services``: one :class:`socklb.Service` per frontend (address, port,
    protocol), in a stable order (Services by namespace/name, then their ports,
    then clusterIPs, externalIPs, load-balancer IPs).
    ``notes``: every skip, in the order logged.
    ``no_local_endpoints``: the frontends left without backends because their
    traffic policy is Local and no usable endpoint is on this node while some are
    elsewhere (kube-proxy's ``sync_proxy_rules_no_local_endpoints_total``).
    """

    services: List[Service] = field(default_factory=list)
    notes: List[Note] = field(default_factory=list)
    no_local_endpoints: List[ServiceKey] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Reading API objects
# ---------------------------------------------------------------------------

_api_client: Any = None


def as_dict(obj: Any) -> Optional[Dict[str, Any]]:
    """An API object as a dict in its JSON form: a dict is returned as it is, an
    official-client model is converted (importing ``kubernetes`` only then);
    anything else gives None.

    >>> as_dict({"kind": "Service"})
    {'kind': 'Service'}
    >>> as_dict(42) is None
    True
    """
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, abc.Mapping):
        return dict(obj)
    if obj is None or isinstance(obj, (str, bytes, int, float, list, tuple)):
        return None
    if not hasattr(obj, "attribute_map"):
        return None
    global _api_client
    if _api_client is None:
        try:
            from kubernetes.client import ApiClient
        except ImportError:
            return None
        _api_client = ApiClient()
    d = _api_client.sanitize_for_serialization(obj)
    return d if isinstance(d, dict) else None


def _items(objs: Any) -> List[Any]:
    """The objects of an input: an iterable of objects, or a List (dict or model) with ``items``."""
    if isinstance(objs, abc.Mapping):
        if "items" not in objs:
            return [objs]  # one object, not a list of them
        items = objs.get("items")
        return list(items) if isinstance(items, (list, tuple)) else []
    items = getattr(objs, "items", None)
    if isinstance(items, list):
        return items
    if objs is None:
        return []
    try:
        return list(objs)
    except TypeError:
        return []


def _mapping(value: Any, where: str, optional: bool = False) -> Mapping[str, Any]:
    if value.__class__ is dict:  # the common case, without the cost of an ABC check
        return value
    if value is None and optional:
        return _EMPTY
    if not isinstance(value, abc.Mapping):
        raise _Malformed(f"{where} must be an object, not {_describe(value)}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if value.__class__ is list:
        return value
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise _Malformed(f"{where} must be a list, not {_describe(value)}")
    return value


def _str(value: Any, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise _Malformed(f"{where} must be a string, not {_describe(value)}")
    return value


def _strs(value: Any, where: str) -> List[str]:
    return [_str(v, f"{where}[{i}]") for i, v in enumerate(_list(value, where))]


def _nonempty_str(value: Any, where: str) -> str:
    s = _str(value, where)
    if not s:
        raise _Malformed(f"{where} is missing")
    return s


def _opt_bool(value: Any, where: str) -> Optional[bool]:
    if value is None or isinstance(value, bool):
        return value
    raise _Malformed(f"{where} must be true, false or null, not {_describe(value)}")


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _Malformed(f"{where} must be an integer in 1..65535, not {_describe(value)}")
    return value


def _labels(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(meta.get("labels"), "metadata.labels", optional=True)


def _names(value: Any, where: str) -> FrozenSet[str]:
    """The ``name`` fields of a hint list (``forZones``, ``forNodes``)."""
    out = set()
    for i, h in enumerate(_list(value, where)):
        out.add(_nonempty_str(_mapping(h, f"{where}[{i}]").get("name"), f"{where}[{i}].name"))
    return frozenset(out)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _meta_name(d: Optional[Mapping[str, Any]], index: int, kind: str) -> Tuple[str, str]:
    """(namespace, name) of an object for matching and messages; a position when it has no name."""
    meta = d.get("metadata") if d is not None else None
    if isinstance(meta, abc.Mapping):
        name, ns = meta.get("name"), meta.get("namespace")
        if isinstance(name, str) and name:
            return (ns if isinstance(ns, str) and ns else "default", name)
    return ("", f"#{index} of the {kind}s given")


def _fullname(ns: str, name: str) -> str:
    return f"{ns}/{name}" if ns else name


# ---------------------------------------------------------------------------
# The intermediate form: endpoints per Service port, as kube-proxy keeps them
# ---------------------------------------------------------------------------


class _Endpoint:
    __slots__ = ("backend", "local", "nodes", "ready", "serving", "terminating", "version", "zones")

    def __init__(
        self,
        backend: Backend,  # ACTIVE, validated; the address normalized
        version: int,
        local: bool,
        ready: bool,
        serving: bool,
        terminating: bool,
        zones: FrozenSet[str],
        nodes: FrozenSet[str],
    ) -> None:
        self.backend, self.version, self.local = backend, version, local
        self.ready, self.serving, self.terminating = ready, serving, terminating
        self.zones, self.nodes = zones, nodes

    def as_backend(self, state: BackendState) -> Backend:
        b = self.backend
        return b if state is BackendState.ACTIVE else Backend(b.address, b.port, state=state)


PortKey = Tuple[str, str]  # (port name, protocol) as in the API: ("http", "TCP")
Endpoints = Dict[PortKey, Dict[Tuple[bytes, int], _Endpoint]]  # by (16-byte address, port)


class _Collector:
    def __init__(self) -> None:
        self.notes: List[Note] = []

    def note(self, kind: str, name: str, reason: str, level: int = logging.WARNING) -> None:
        self.add(Note(kind, name, reason, level))

    def add(self, n: Note) -> None:
        self.notes.append(n)
        logger.log(n.level, "%s %s: %s", n.kind, n.name, n.reason)


class _Silent(_Collector):
    """Notes kept to be given (and logged) later, by each translation that reads them."""

    def add(self, n: Note) -> None:
        self.notes.append(n)


_NO_NAMES: FrozenSet[str] = frozenset()
_EndpointFields = Tuple[str, Optional[bool], Optional[bool], Optional[bool], str, FrozenSet[str], FrozenSet[str]]


def _is_opt_bool(v: Any) -> bool:
    return v is None or v is True or v is False


def _read_endpoint(raw: Any, i: int) -> _EndpointFields:
    """(addresses[0], ready, serving, terminating, nodeName, zone hints, node hints) of one endpoint."""
    # The common shape first, without building a message per field; anything else takes the checked path.
    if raw.__class__ is dict and raw.get("hints") is None:
        addresses, cond, node_name = raw.get("addresses"), raw.get("conditions"), raw.get("nodeName")
        if (
            addresses.__class__ is list
            and addresses
            and addresses[0].__class__ is str
            and (node_name is None or node_name.__class__ is str)
            and (cond is None or cond.__class__ is dict)
        ):
            c = cond or _EMPTY
            ready, serving, terminating = c.get("ready"), c.get("serving"), c.get("terminating")
            if _is_opt_bool(ready) and _is_opt_bool(serving) and _is_opt_bool(terminating):
                return (addresses[0], ready, serving, terminating, node_name or "", _NO_NAMES, _NO_NAMES)
    e = _mapping(raw, f"endpoints[{i}]")
    addresses = _list(e.get("addresses"), f"endpoints[{i}].addresses")
    if not addresses:
        raise _Malformed(f"endpoints[{i}].addresses is empty")
    address = _str(addresses[0], f"endpoints[{i}].addresses[0]")
    cond = _mapping(e.get("conditions"), f"endpoints[{i}].conditions", optional=True)
    ready = _opt_bool(cond.get("ready"), f"endpoints[{i}].conditions.ready")
    serving = _opt_bool(cond.get("serving"), f"endpoints[{i}].conditions.serving")
    terminating = _opt_bool(cond.get("terminating"), f"endpoints[{i}].conditions.terminating")
    node_name = _str(e.get("nodeName"), f"endpoints[{i}].nodeName")
    hints = _mapping(e.get("hints"), f"endpoints[{i}].hints", optional=True)
    zones = _names(hints.get("forZones"), f"endpoints[{i}].hints.forZones")
    nodes = _names(hints.get("forNodes"), f"endpoints[{i}].hints.forNodes")
    return (address, ready, serving, terminating, node_name, zones, nodes)


_NO_HINTS: Tuple[FrozenSet[str], FrozenSet[str]] = (_NO_NAMES, _NO_NAMES)
_READY, _SERVING, _TERMINATING = 1, 2, 4  # SliceRead.flags: ready and serving unless false, terminating if true


class SliceRead:
    """An EndpointSlice as the translation reads it (:func:`read_slice`): its
    Service, ports and endpoints checked once, for any node;
    :func:`translate_with_notes` takes it in place of the object, as many
    times as needed, without reading it again.  The endpoints are kept as
    columns of plain values (a slice of 10 endpoints in a few hundred bytes,
    nothing for the cyclic garbage collector to walk)."""

    __slots__ = (
        "_name",
        "_ns",
        "addresses",
        "flags",
        "hints",
        "nodes",
        "notes",
        "owner_notes",
        "ports",
        "service",
        "version",
    )

    def __init__(self, where: Tuple[str, str] = ("", "")) -> None:
        self._ns, self._name = where  # the object's own strings: no new one per slice
        self.service: Optional[Tuple[str, str]] = None
        """(namespace, Service name), or None when the slice is skipped."""
        self.owner_notes: Tuple[Note, ...] = ()  # why it was skipped (given by every translation)
        self.notes: Tuple[Note, ...] = ()  # what was skipped of it (given when its Service is translated)
        self.version = 4
        self.ports: Tuple[Tuple[PortKey, int], ...] = ()
        self.addresses = b""  # each endpoint's address, checked as a backend's: 4 bytes each (IPv4) or 16 (IPv6)
        self.nodes: Tuple[str, ...] = ()  # each endpoint's nodeName ("" if none)
        self.flags = b""  # each endpoint's _READY | _SERVING | _TERMINATING
        self.hints: Optional[Tuple[Tuple[FrozenSet[str], FrozenSet[str]], ...]] = None  # each one's (zones, nodes)

    @property
    def where(self) -> str:
        """The slice's namespace/name, as notes name it."""
        return _fullname(self._ns, self._name)


_SHARED: Dict[Any, Any] = {}  # equal port lists, node name lists and flags of many slices: one copy


def _shared(value: Any) -> Any:
    got = _SHARED.get(value)
    if got is not None:
        return got
    if len(_SHARED) < 65536:
        _SHARED[value] = value
    return value


def read_slice(obj: Any, index: int = 0, *, into: Optional[SliceRead] = None) -> SliceRead:
    """The EndpointSlice ``obj`` (a dict or a client model) as :class:`SliceRead`:
    what :func:`translate` would read of it, checked, for any node.  ``index``
    names an object without a name in notes (its position in the input);
    ``into`` is the (new) SliceRead to fill, of a subclass, say.

    >>> r = read_slice({"metadata": {"name": "web-x1", "namespace": "default",
    ...                              "labels": {"kubernetes.io/service-name": "web"}},
    ...                 "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
    ...                 "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-a"}]})
    >>> r.service, r.ports, r.nodes, len(r.addresses)
    (('default', 'web'), ((('http', 'TCP'), 8080),), ('node-a',), 4)
    """
    d = as_dict(obj)
    r = into if into is not None else SliceRead()
    r._ns, r._name = _meta_name(d, index, "EndpointSlice")
    notes = _Silent()
    if d is None:
        notes.note("EndpointSlice", r.where, f"skipped: not an API object ({type(obj).__name__})")
    elif d.get("kind") is not None and d.get("kind") != "EndpointSlice":
        notes.note("EndpointSlice", r.where, f"skipped: kind is {_describe(d.get('kind'))}, not EndpointSlice")
    else:
        try:
            r.service = _slice_owner(d, r.where, notes)
        except _Malformed as e:
            notes.note("EndpointSlice", r.where, f"skipped: {e}")
    r.owner_notes = tuple(notes.notes)
    if r.service is None or d is None:
        return r
    notes = _Silent()
    try:
        _read_slice_endpoints(d, r, notes)
    except _Malformed as e:
        notes.note("EndpointSlice", r.where, f"skipped: {e}")
    r.notes = tuple(notes.notes)
    return r


def _read_slice_endpoints(d: Mapping[str, Any], r: SliceRead, notes: _Collector) -> None:
    """Fill ``r`` with the ports and endpoints of one (already accepted) slice."""
    where = r.where
    address_type = d.get("addressType")
    if address_type == "IPv4":
        version = 4
    elif address_type == "IPv6":
        version = 6
    else:
        raise _Malformed(f"addressType must be IPv4, IPv6 or FQDN, not {_describe(address_type)}")
    ports: List[Tuple[PortKey, int]] = []
    for i, p in enumerate(_list(d.get("ports"), "ports")):
        p = _mapping(p, f"ports[{i}]")
        name = _str(p.get("name"), f"ports[{i}].name")
        proto = _str(p.get("protocol"), f"ports[{i}].protocol", "TCP")
        if p.get("port") is None:
            notes.note(
                "EndpointSlice", where, f"port {name or '(unnamed)'}/{proto} has no number: ignored", logging.DEBUG
            )
            continue
        try:
            ports.append(((name, proto), _port_number(p.get("port"), f"ports[{i}].port")))
        except _Malformed as err:
            notes.note("EndpointSlice", where, f"{err}: that port is skipped")
    endpoints = _list(d.get("endpoints"), "endpoints")
    if not ports:
        return
    addresses = bytearray()
    nodes: List[str] = []
    flags = bytearray()
    hints: List[Tuple[FrozenSet[str], FrozenSet[str]]] = []
    intern = sys.intern
    for i, raw in enumerate(endpoints):
        try:
            address, ready, serving, terminating, node_name, zones, for_nodes = _read_endpoint(raw, i)
        except _Malformed as err:
            notes.note("EndpointSlice", where, f"{err}: that endpoint is skipped")
            continue
        try:
            text, a16, got = model_address(address, "address", backend=True)  # as Backend(address, port) checks it
        except InvalidValueError as err:
            notes.note("EndpointSlice", where, f"endpoints[{i}] {address!r}: {err}: that endpoint is skipped")
            continue
        if got != version:
            notes.note("EndpointSlice", where, f"endpoints[{i}] {text} is IPv{got} in an {address_type} slice: dropped")
            continue
        addresses += a16[12:] if version == 4 else a16
        nodes.append(intern(node_name))
        flags.append(
            (_READY if ready is not False else 0)
            | (_SERVING if serving is not False else 0)
            | (_TERMINATING if terminating is True else 0)
        )
        hints.append((zones, for_nodes))
    r.version = version
    r.ports = _shared(tuple(ports))
    r.addresses = bytes(addresses)
    r.nodes = _shared(tuple(nodes))
    r.flags = _shared(bytes(flags))
    r.hints = tuple(hints) if any(z or n for z, n in hints) else None


def _slice_endpoints(r: SliceRead, node: Node, out: Endpoints) -> None:
    """Add the endpoints of one (already accepted) slice, read, to ``out`` for ``node``."""
    ports = r.ports
    if not ports:
        return
    version, name, hints, addresses = r.version, node.name, r.hints, r.addresses
    by_port = [(out.setdefault(key, {}), number) for key, number in ports]
    for i, (node_name, f) in enumerate(zip(r.nodes, r.flags)):
        local = node_name == name
        zones, nodes = hints[i] if hints is not None else _NO_HINTS
        ready, serving, terminating = f & _READY != 0, f & _SERVING != 0, f & _TERMINATING != 0
        a16 = _V4_MAPPED + addresses[4 * i : 4 * i + 4] if version == 4 else addresses[16 * i : 16 * i + 16]
        for by_addr, number in by_port:
            # kube-proxy: the first copy of an address:port wins, unless a later one is local.
            at = (a16, number)
            if local or at not in by_addr:
                backend = active_backend(a16, number)
                by_addr[at] = _Endpoint(backend, version, local, ready, serving, terminating, zones, nodes)


def _topology(eps: Sequence[_Endpoint], node: Node) -> Optional[str]:
    """kube-proxy's topologyModeFromHints: "node", "zone" or None (no filter)."""
    all_node = all_zone = True
    has_node = has_zone = False
    for e in eps:
        if not e.ready:
            continue
        if not e.nodes:
            all_node = False
        elif node.name in e.nodes:
            has_node = True
        if not e.zones:
            all_zone = False
        elif node.zone is not None and node.zone in e.zones:
            has_zone = True
    if all_node and has_node:
        return "node"
    if all_zone and has_zone:
        return "zone"
    return None


def _backends(eps: Sequence[_Endpoint], local_policy: bool, node: Node) -> Tuple[List[Backend], bool]:
    """kube-proxy's CategorizeEndpoints for one policy: the backends, and whether
    a Local policy found usable endpoints elsewhere but none on this node."""
    if not local_policy:
        mode = _topology(eps, node)
        if mode == "node":
            ready = [e for e in eps if e.ready and node.name in e.nodes]
        elif mode == "zone":
            ready = [e for e in eps if e.ready and node.zone in e.zones]
        else:
            ready = [e for e in eps if e.ready]
        if ready:
            return [e.backend for e in ready], False
        return [e.as_backend(BackendState.TERMINATING) for e in eps if e.serving and e.terminating], False
    ready = [e for e in eps if e.local and e.ready]
    if ready:
        return [e.backend for e in ready], False
    draining = [e for e in eps if e.local and e.serving and e.terminating]
    if draining:
        return [e.as_backend(BackendState.TERMINATING) for e in draining], False
    elsewhere = any(e.ready or (e.serving and e.terminating) for e in eps)
    return [], elsewhere


# ---------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------


@dataclass
class _Spec:
    """What a Service contributes, read and checked."""

    ns: str
    name: str
    cluster_ips: List[str]
    external_ips: List[str]  # externalIPs then load-balancer ingress IPs
    ports: List[Tuple[PortKey, int, str, int]]  # (join key, service port, "tcp"/"udp", nodePort or 0)
    affinity: Optional[Affinity]
    internal_local: bool
    external_local: bool


def _read_service(d: Mapping[str, Any], where: str, proxy_name: Optional[str], notes: _Collector) -> Optional[_Spec]:
    """The Service's frontends and ports, or None when it is skipped (noted)."""
    meta = _mapping(d.get("metadata"), "metadata")
    name = _nonempty_str(meta.get("name"), "metadata.name")
    ns = _str(meta.get("namespace"), "metadata.namespace") or "default"
    labels = _labels(meta)
    spec = _mapping(d.get("spec"), "spec")
    status = _mapping(d.get("status"), "status", optional=True)

    def skip(reason: str) -> None:
        notes.note("Service", where, f"skipped: {reason}", logging.DEBUG)

    svc_type = _str(spec.get("type"), "spec.type", "ClusterIP")
    if svc_type == "ExternalName":
        skip("type ExternalName")
        return None
    owner = labels.get(LABEL_SERVICE_PROXY_NAME)
    if proxy_name is None and owner is not None:
        skip(f"label {LABEL_SERVICE_PROXY_NAME}={owner}: another proxy serves it")
        return None
    if proxy_name is not None and owner != proxy_name:
        skip(f"label {LABEL_SERVICE_PROXY_NAME} is {owner!r}, not this proxy's {proxy_name!r}")
        return None
    if LABEL_HEADLESS in labels:
        skip(f"label {LABEL_HEADLESS}")
        return None
    cluster_ips = _strs(spec.get("clusterIPs"), "spec.clusterIPs")
    cluster_ip = _str(spec.get("clusterIP"), "spec.clusterIP", cluster_ips[0] if cluster_ips else "")
    if cluster_ip in ("", "None"):
        skip("headless (clusterIP None)" if cluster_ip == "None" else "no clusterIP")
        return None
    if not cluster_ips:
        cluster_ips = [cluster_ip]
    external = _strs(spec.get("externalIPs"), "spec.externalIPs")
    lb = _mapping(status.get("loadBalancer"), "status.loadBalancer", optional=True)
    for i, ing in enumerate(_list(lb.get("ingress"), "status.loadBalancer.ingress")):
        ing = _mapping(ing, f"status.loadBalancer.ingress[{i}]")
        ip = _str(ing.get("ip"), f"status.loadBalancer.ingress[{i}].ip")
        mode = _str(ing.get("ipMode"), f"status.loadBalancer.ingress[{i}].ipMode", "VIP")
        if ip and mode == "VIP":
            external.append(ip)
        elif ip:
            notes.note("Service", where, f"load-balancer IP {ip} has ipMode {mode}: not a frontend", logging.DEBUG)

    affinity_kind = _str(spec.get("sessionAffinity"), "spec.sessionAffinity", "None")
    affinity: Optional[Affinity] = None
    if affinity_kind == "ClientIP":
        cfg = _mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", optional=True)
        client = _mapping(cfg.get("clientIP"), "spec.sessionAffinityConfig.clientIP", optional=True)
        timeout = client.get("timeoutSeconds")
        try:
            affinity = Affinity(DEFAULT_AFFINITY_TIMEOUT if timeout is None else timeout)
        except InvalidValueError as e:
            raise _Malformed(f"spec.sessionAffinityConfig.clientIP.timeoutSeconds: {e}") from None
    elif affinity_kind != "None":
        raise _Malformed(f"spec.sessionAffinity must be None or ClientIP, not {_describe(affinity_kind)}")

    def policy(key: str) -> bool:
        value = _str(spec.get(key), f"spec.{key}", "Cluster")
        if value not in ("Cluster", "Local"):
            raise _Malformed(f"spec.{key} must be Cluster or Local, not {_describe(value)}")
        return value == "Local"

    internal_local = policy("internalTrafficPolicy")
    # The API allows externalTrafficPolicy Local only on NodePort and LoadBalancer
    # Services; kube-proxy ignores it on the others (apiservice.ExternalPolicyLocal).
    external_local = policy("externalTrafficPolicy") and svc_type in ("NodePort", "LoadBalancer")

    takes_node_ports = svc_type in ("NodePort", "LoadBalancer")
    ports: List[Tuple[PortKey, int, str, int]] = []
    for i, p in enumerate(_list(spec.get("ports"), "spec.ports")):
        try:
            p = _mapping(p, f"spec.ports[{i}]")
            pname = _str(p.get("name"), f"spec.ports[{i}].name")
            proto = _str(p.get("protocol"), f"spec.ports[{i}].protocol", "TCP")
            number = _port_number(p.get("port"), f"spec.ports[{i}].port")
        except _Malformed as e:
            notes.note("Service", where, f"{e}: that port is skipped")
            continue
        node_port = 0
        if takes_node_ports and p.get("nodePort") not in (None, 0):
            try:
                node_port = _port_number(p.get("nodePort"), f"spec.ports[{i}].nodePort")
            except _Malformed as e:
                notes.note("Service", where, f"{e}: no NodePort for port {number}")
        if proto == "SCTP":
            notes.note("Service", where, f"port {number}/SCTP skipped: socklb balances TCP and UDP", logging.INFO)
            continue
        if proto not in ("TCP", "UDP"):
            notes.note("Service", where, f"spec.ports[{i}].protocol {proto!r} is not TCP, UDP or SCTP: skipped")
            continue
        ports.append(((pname, proto), number, proto.lower(), node_port))
    return _Spec(ns, name, cluster_ips, external, ports, affinity, internal_local, external_local)


def _slice_owner(d: Mapping[str, Any], where: str, notes: _Collector) -> Optional[Tuple[str, str]]:
    """(namespace, Service name) of a slice kube-proxy would use, or None (noted)."""
    meta = _mapping(d.get("metadata"), "metadata")
    labels = _labels(meta)
    if LABEL_HEADLESS in labels:
        notes.note("EndpointSlice", where, f"skipped: label {LABEL_HEADLESS}", logging.DEBUG)
        return None
    owner = labels.get(LABEL_SERVICE_NAME)
    if not isinstance(owner, str) or not owner:
        notes.note("EndpointSlice", where, f"skipped: no {LABEL_SERVICE_NAME} label", logging.DEBUG)
        return None
    if d.get("addressType") == "FQDN":
        notes.note("EndpointSlice", where, "skipped: addressType FQDN", logging.DEBUG)
        return None
    ns = _str(meta.get("namespace"), "metadata.namespace") or "default"
    return (ns, owner)


def _objects(items: Any, kind: str, notes: _Collector) -> Iterable[Tuple[Mapping[str, Any], str]]:
    """(object as a dict, its namespace/name) of each item that is an API
    object of ``kind``; the others are noted and skipped."""
    for i, obj in enumerate(_items(items)):
        d = as_dict(obj)
        where = _fullname(*_meta_name(d, i, kind))
        if d is None:
            notes.note(kind, where, f"skipped: not an API object ({type(obj).__name__})")
            continue
        found = d.get("kind")
        if found is not None and found != kind:
            notes.note(kind, where, f"skipped: kind is {_describe(found)}, not {kind}")
            continue
        yield d, where


def _where_of(r: SliceRead) -> str:
    return r.where


def translate_with_notes(
    services: Iterable[Any],
    endpointslices: Iterable[Any],
    node: Union[Node, str],
    proxy_name: Optional[str] = None,
    *,
    algorithm: Union[str, Algorithm] = Algorithm.RANDOM,
    apply_external_traffic_policy: bool = False,
) -> Translation:
    """:func:`translate`, also returning what was skipped and which Local frontends were refused.

    >>> t = translate_with_notes([{"metadata": {"name": "dns", "namespace": "kube-system"},
    ...                            "spec": {"clusterIP": "10.96.0.10",
    ...                                     "ports": [{"port": 53, "protocol": "SCTP"}]}}], [], "node-a")
    >>> t.services, [str(n) for n in t.notes]
    ([], ['Service kube-system/dns: port 53/SCTP skipped: socklb balances TCP and UDP'])
    """
    if isinstance(node, str):
        node = Node(node)
    if not isinstance(node, Node):
        raise TypeError(f"node must be a Node or a node name, not {type(node).__name__}")
    algo = Algorithm(algorithm)
    notes = _Collector()
    result = Translation(notes=notes.notes)

    specs: List[_Spec] = []
    for d, where in _objects(services, "Service", notes):
        try:
            spec = _read_service(d, where, proxy_name, notes)
        except _Malformed as e:
            notes.note("Service", where, f"skipped: {e}")
            continue
        if spec is not None:
            specs.append(spec)
    specs.sort(key=lambda s: (s.ns, s.name))
    wanted = {(s.ns, s.name) for s in specs}

    slices: List[SliceRead] = []
    for i, obj in enumerate(_items(endpointslices)):
        r = obj if isinstance(obj, SliceRead) else read_slice(obj, i)
        for n in r.owner_notes:
            notes.add(n)
        if r.service is not None and r.service in wanted:
            slices.append(r)
    # The first slice by name wins a duplicate endpoint: make that independent of input order.
    slices.sort(key=_where_of)
    endpoints: Dict[Tuple[str, str], Endpoints] = {}
    for r in slices:
        for n in r.notes:
            notes.add(n)
        assert r.service is not None
        _slice_endpoints(r, node, endpoints.setdefault(r.service, {}))

    claimed: Dict[ServiceKey, str] = {}
    for spec in specs:
        where = _fullname(spec.ns, spec.name)
        by_port = endpoints.get((spec.ns, spec.name), {})
        frontends = [(ip, False) for ip in spec.cluster_ips] + [(ip, True) for ip in spec.external_ips]
        # One NodePort per family of the Service (its cluster IPs'), on the node's addresses.
        families = sorted({6 if ":" in ip else 4 for ip in spec.cluster_ips})
        for key, number, proto, node_port in spec.ports:
            eps_all = list(by_port.get(key, {}).values())
            cache: Dict[Tuple[int, bool], Tuple[List[Backend], bool]] = {}
            fronts = frontends + ([("0.0.0.0" if v == 4 else "::", True) for v in families] if node_port else [])
            for address, external in fronts:
                if external:
                    local = spec.external_local and apply_external_traffic_policy
                else:
                    local = spec.internal_local
                version = 6 if ":" in address else 4
                got = cache.get((version, local))
                if got is None:
                    got = _backends([e for e in eps_all if e.version == version], local, node)
                    cache[(version, local)] = got
                backends, refused = got
                try:
                    if address in ("0.0.0.0", "::"):
                        svc = Service.node_port(
                            node_port, proto, backends, family=version, algorithm=algo, affinity=spec.affinity
                        )
                    else:
                        svc = Service(
                            address, number, protocol=proto, backends=backends, algorithm=algo, affinity=spec.affinity
                        )
                except InvalidValueError as e:
                    notes.note("Service", where, f"frontend {address!r} port {number}/{proto}: {e}: skipped")
                    continue
                first = claimed.get(svc.key)
                if first is not None:
                    if first != where:
                        notes.note("Service", where, f"frontend {svc} is already {first}'s: skipped")
                    continue
                claimed[svc.key] = where
                if refused:
                    notes.note(
                        "Service",
                        where,
                        f"frontend {svc}: traffic policy Local and no endpoint on node {node.name}: "
                        "no backends, connections are refused",
                        logging.INFO,
                    )
                    result.no_local_endpoints.append(svc.key)
                result.services.append(svc)
    return result


def translate(
    services: Iterable[Any],
    endpointslices: Iterable[Any],
    node: Union[Node, str],
    proxy_name: Optional[str] = None,
    *,
    algorithm: Union[str, Algorithm] = Algorithm.RANDOM,
    apply_external_traffic_policy: bool = False,
) -> List[Service]:
    """The :class:`socklb.Service` values kube-proxy's rules give for ``node``:
    one per frontend (address, port, protocol).

    ``services`` and ``endpointslices`` are iterables of API objects (dicts in
    JSON form or official-client models) or List objects with ``items``.
    ``proxy_name`` is this agent's ``service.kubernetes.io/service-proxy-name``
    (None: take only Services without that label).  ``algorithm`` is given to
    every Service.  See the module documentation for the rules; nothing raises
    for malformed input, which is skipped and logged.

    >>> svc = {"metadata": {"name": "dns", "namespace": "kube-system"},
    ...        "spec": {"clusterIPs": ["10.96.0.10", "fd00:96::a"], "sessionAffinity": "ClientIP",
    ...                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}
    >>> [str(s) for s in translate([svc], [], Node("node-a"))]
    ['10.96.0.10:53/udp', '[fd00:96::a]:53/udp']
    >>> translate([svc], [], Node("node-a"))[0].affinity
    Affinity(timeout=10800)
    """
    return translate_with_notes(
        services,
        endpointslices,
        node,
        proxy_name,
        algorithm=algorithm,
        apply_external_traffic_policy=apply_external_traffic_policy,
    ).services
