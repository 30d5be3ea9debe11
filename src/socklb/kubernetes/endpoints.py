"""EndpointSlices as kube-proxy reads them: each endpoint's conditions and
topology hints, the endpoints of a Service merged per port
(:data:`Endpoints`), and the backends one traffic policy gives on this node
(kube-proxy's topology filter and CategorizeEndpoints)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from socklb.errors import InvalidValueError
from socklb.kubernetes.objects import (
    _EMPTY,
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    Node,
    _Collector,
    _describe,
    _labels,
    _list,
    _Malformed,
    _mapping,
    _names,
    _opt_bool,
    _port_number,
    _str,
)
from socklb.model import Backend, BackendState

# ---------------------------------------------------------------------------
# The intermediate form: endpoints per Service port, as kube-proxy keeps them
# ---------------------------------------------------------------------------


@dataclass
class _Endpoint:
    backend: Backend  # ACTIVE, validated; the address normalized
    version: int
    local: bool
    ready: bool
    serving: bool
    terminating: bool
    zones: FrozenSet[str]
    nodes: FrozenSet[str]

    def as_backend(self, state: BackendState) -> Backend:
        b = self.backend
        return b if state is BackendState.ACTIVE else Backend(b.address, b.port, state=state)


PortKey = Tuple[str, str]  # (port name, protocol) as in the API: ("http", "TCP")
Endpoints = Dict[PortKey, Dict[Tuple[str, int], _Endpoint]]


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


def _slice_endpoints(d: Mapping[str, Any], where: str, node: Node, out: Endpoints, notes: _Collector) -> None:
    """Add the endpoints of one (already accepted) slice to ``out``."""
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
    for i, raw in enumerate(endpoints):
        try:
            address, ready, serving, terminating, node_name, zones, nodes = _read_endpoint(raw, i)
        except _Malformed as err:
            notes.note("EndpointSlice", where, f"{err}: that endpoint is skipped")
            continue
        local = node_name == node.name
        first = True
        for key, number in ports:
            try:
                backend = Backend(address, number)
            except InvalidValueError as err:
                if first:  # one line per endpoint, not one per port
                    notes.note("EndpointSlice", where, f"endpoints[{i}] {address!r}: {err}: that endpoint is skipped")
                break
            first = False
            got = 6 if ":" in backend.address else 4
            if got != version:
                notes.note(
                    "EndpointSlice",
                    where,
                    f"endpoints[{i}] {backend.address} is IPv{got} in an {address_type} slice: dropped",
                )
                break
            ep = _Endpoint(
                backend,
                version,
                local,
                ready is not False,
                serving is not False,
                terminating is True,
                zones,
                nodes,
            )
            by_addr = out.setdefault(key, {})
            # kube-proxy: the first copy of an address:port wins, unless a later one is local.
            where_at = (backend.address, backend.port)
            if where_at not in by_addr or local:
                by_addr[where_at] = ep


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
