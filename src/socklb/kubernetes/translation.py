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
- Frontends never served (CVE-2020-8554: a Service's ``clusterIP``,
  ``externalIPs`` or load-balancer status capturing traffic meant for the node
  or the cloud): loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, which
  holds the metadata server 169.254.169.254, and fe80::/10), multicast and the
  unspecified address, whichever field names them; each refusal is a note naming
  the rule.
- ``externalIPs`` are served only inside ``external_ip_cidrs``, an allow-list
  that is **empty by default**: any user who may create a Service may set
  ``externalIPs`` and so take over any address for the pods of the node (the
  attack of CVE-2020-8554); the Kubernetes project's mitigation is to deny them
  unless an administrator allows them (the ``DenyServiceExternalIPs``
  admission plugin, or a webhook with an allow-list).  A socket load balancer
  has no admission step, so it applies the allow-list itself; pass
  ``external_ip_cidrs=["203.0.113.0/24"]`` (``socklb kubernetes
  --external-ip-cidrs``) for the ranges the cluster really assigns, or
  ``["0.0.0.0/0", "::/0"]`` for kube-proxy's behaviour.  Load-balancer ingress
  IPs are written to the Service's status by the cloud controller (a
  privileged ``services/status`` permission) and are not subject to it.
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

This module holds the Services' part and :func:`translate`;
:mod:`socklb.kubernetes.objects` reads and checks the API objects (and holds
:class:`Node`, :class:`Note`, :func:`as_dict`, the labels) and
:mod:`socklb.kubernetes.endpoints` the EndpointSlices' part (conditions,
merging, topology, the backends of a traffic policy).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from socklb.errors import InvalidValueError
from socklb.kubernetes.endpoints import Endpoints, PortKey, SliceRead, _backends, _slice_endpoints, read_slice
from socklb.kubernetes.objects import (
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME,
    LABEL_ZONE,
    Node,
    Note,
    _Collector,
    _describe,
    _fullname,
    _items,
    _labels,
    _list,
    _Malformed,
    _mapping,
    _nonempty_str,
    _objects,
    _port_number,
    _str,
    _strs,
    as_dict,
)
from socklb.model import Affinity, Algorithm, Backend, Service, ServiceKey
from socklb.model.checks import special_frontend

__all__ = [
    "LABEL_HEADLESS",
    "LABEL_SERVICE_NAME",
    "LABEL_SERVICE_PROXY_NAME",
    "LABEL_ZONE",
    "Node",
    "Note",
    "DEFAULT_EXTERNAL_IP_CIDRS",
    "SliceRead",
    "Translation",
    "as_dict",
    "external_ip_networks",
    "read_slice",
    "translate",
    "translate_with_notes",
]

DEFAULT_AFFINITY_TIMEOUT = 10800

# The names this module's API is made of, defined in socklb.kubernetes.objects:
# they are this module's (pickles, documentation and the doctests name it).
for _public in (Node, Note, as_dict):
    _public.__module__ = __name__
del _public


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
    spec_external: int = 0  # external_ips[:spec_external] are spec.externalIPs (the allow-list applies)


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
    spec_external = len(external)
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
    return _Spec(ns, name, cluster_ips, external, ports, affinity, internal_local, external_local, spec_external)


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# No externalIP is served unless its range is allowed (see the module documentation).
DEFAULT_EXTERNAL_IP_CIDRS: Tuple[str, ...] = ()


def external_ip_networks(cidrs: Iterable[Union[str, Network]]) -> Tuple[Network, ...]:
    """The allow-list of external-IP ranges, checked: ``"203.0.113.0/24"``,
    ``"2001:db8::/64"`` or an address alone (a /32 or /128).  Raises
    InvalidValueError naming the entry that is not a range.

    >>> [str(n) for n in external_ip_networks(["203.0.113.0/24", "2001:db8::7"])]
    ['203.0.113.0/24', '2001:db8::7/128']
    """
    if isinstance(cidrs, (str, bytes)):
        raise InvalidValueError("external_ip_cidrs", f"must be a list of CIDRs, not the string {cidrs!r}")
    out: List[Network] = []
    for i, c in enumerate(cidrs):
        if isinstance(c, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            out.append(c)
            continue
        if not isinstance(c, str):
            raise InvalidValueError(f"external_ip_cidrs[{i}]", f"must be a CIDR string, not {type(c).__name__}")
        try:
            out.append(ipaddress.ip_network(c.strip(), strict=False))
        except ValueError:
            raise InvalidValueError(
                f"external_ip_cidrs[{i}]", f"{c!r} is not an IPv4 or IPv6 range (203.0.113.0/24, 2001:db8::/64)"
            ) from None
    return tuple(out)


def _refused(address: str, external: bool, allowed: Tuple[Network, ...]) -> Optional[str]:
    """Why a Service's frontend address is not served, or None (then Service()
    checks it further)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # Service() says what is wrong with it
    rule = special_frontend(ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed)
    if rule is not None:
        return f"is {rule}: never served (CVE-2020-8554)"
    if external and not any(ip in n for n in allowed):
        return (
            "is not in the allowed external-IP ranges (external_ip_cidrs, --external-ip-cidrs): not served "
            "(CVE-2020-8554; by default no externalIP is)"
        )
    return None


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
    external_ip_cidrs: Iterable[Union[str, Network]] = DEFAULT_EXTERNAL_IP_CIDRS,
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
    allowed = external_ip_networks(external_ip_cidrs)
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
        frontends: List[Tuple[str, bool]] = []
        given = [(ip, False, False) for ip in spec.cluster_ips]
        given += [(ip, True, i < spec.spec_external) for i, ip in enumerate(spec.external_ips)]
        for ip, external, listed in given:
            why = _refused(ip, listed, allowed)
            if why is None:
                frontends.append((ip, external))
            else:
                notes.note("Service", where, f"frontend {ip} {why}", logging.WARNING)
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
    external_ip_cidrs: Iterable[Union[str, Network]] = DEFAULT_EXTERNAL_IP_CIDRS,
) -> List[Service]:
    """The :class:`socklb.Service` values kube-proxy's rules give for ``node``:
    one per frontend (address, port, protocol).

    ``services`` and ``endpointslices`` are iterables of API objects (dicts in
    JSON form or official-client models) or List objects with ``items``.
    ``proxy_name`` is this agent's ``service.kubernetes.io/service-proxy-name``
    (None: take only Services without that label).  ``algorithm`` is given to
    every Service.  ``external_ip_cidrs`` lists the ranges whose ``externalIPs``
    are served (none by default: CVE-2020-8554, see the module documentation);
    a range that is not one raises InvalidValueError.  See the module documentation for the rules; nothing raises
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
        external_ip_cidrs=external_ip_cidrs,
    ).services
