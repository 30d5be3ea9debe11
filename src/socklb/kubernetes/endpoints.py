"""EndpointSlices as kube-proxy reads them: each endpoint's conditions and
topology hints, the endpoints of a Service merged per port
(:data:`Endpoints`), and the backends one traffic policy gives on this node
(kube-proxy's topology filter and CategorizeEndpoints)."""

from __future__ import annotations

import logging
import sys
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from socklb.errors import InvalidValueError
from socklb.kubernetes.objects import (
    _EMPTY,
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    Node,
    Note,
    _Collector,
    _describe,
    _fullname,
    _labels,
    _list,
    _Malformed,
    _mapping,
    _meta_name,
    _names,
    _opt_bool,
    _port_number,
    _Silent,
    _str,
    as_dict,
)
from socklb.model import Backend, BackendState
from socklb.model.checks import _V4_MAPPED
from socklb.model.checks import _address as model_address
from socklb.model.values import _active_backend as active_backend

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
