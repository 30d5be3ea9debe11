"""The node agent: Services and EndpointSlices from the API server, programmed into a :class:`socklb.Balancer`.

One :class:`~socklb.kubernetes.reflector.Reflector` per resource keeps a copy
of the Services, the EndpointSlices and this node's Node object (for its zone
label).  The agent applies what changed:

- **incrementally**: an event marks the Service it concerns (a slice's owner is
  its ``kubernetes.io/service-name`` label, the old and the new one) as dirty;
  the apply thread translates only the dirty Services (with their slices) and
  writes only the frontends whose :class:`socklb.Service` value changed, all
  in one :meth:`Balancer.apply` (one plan, one map write; if the balancer
  refuses the batch, each service on its own, so that one it refuses holds
  back only itself);
- **coalesced** like kube-proxy's ``minSyncPeriod``: an apply starts at once
  when the last one started at least ``min_sync_period`` seconds ago, else
  when that much time has passed; everything that arrived meanwhile goes in one
  apply;
- **in full** after each (re)list of any resource (and when the node's zone
  changes): every Service is translated and :meth:`Balancer.sync` makes the
  programmed set exactly that, touching only what differs.  A balancer made
  with ``pin_dir`` that adopted the state of an earlier agent is therefore
  converged by the first full sync without disturbing unchanged services.

A frontend (address, port, protocol) claimed by two Services goes to the first
by namespace/name, as :func:`~socklb.kubernetes.translate` decides; when that
one lets it go, the other takes it.

Nothing from the API raises out of the agent: malformed objects are skipped by
the translation (and logged), a failed write is logged, counted and retried
with backoff, and the agent keeps going.

>>> from kubernetes import client                                      # doctest: +SKIP
>>> agent = Agent(Balancer(), node_name="node-a", api_client=client.ApiClient(),
...               healthz_port=10256)                                  # doctest: +SKIP
>>> agent.start(); agent.wait_synced(60)                              # doctest: +SKIP
>>> agent.stats()["network_programming_seconds"]["p99"]               # doctest: +SKIP

Measured (:meth:`Agent.stats`): network programming latency, from the
EndpointSlice annotation ``endpoints.kubernetes.io/last-change-trigger-time``
to the end of the map write that applied it (kube-proxy's
``network_programming_duration_seconds``; trigger times older than the agent
are not counted, so a restart does not report the age of old changes); apply
durations, incremental and full; counts of events, writes and errors.
``/healthz`` (``healthz_port``) answers 200 once the first full sync is done
and while no change has waited longer than ``healthz_timeout`` seconds to be
applied (kube-proxy's rule), else 503; ``/metrics`` gives the same numbers in
the Prometheus text format.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import math
import re
import sys
import threading
import time
import zlib
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Protocol, Sequence, Set, Tuple, Union

from socklb.datapath.node import usable_node_address
from socklb.kubernetes.reflector import Event, Reflector, list_function
from socklb.kubernetes.translation import (
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME,
    Node,
    SliceRead,
    read_slice,
    translate_with_notes,
)
from socklb.model import Algorithm, Service, ServiceKey

__all__ = [
    "ANNOTATION_TRIGGER_TIME",
    "Agent",
    "Changes",
    "Compact",
    "KeptSlice",
    "Samples",
    "ServiceWriter",
    "compact",
    "expand",
    "keep_slice",
    "parse_trigger_time",
]

logger = logging.getLogger("socklb.kubernetes")

ANNOTATION_TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"


class Changes(Protocol):
    """What :meth:`Balancer.sync` returns that the agent reads (:class:`socklb.SyncResult`)."""

    @property
    def added(self) -> Sequence[ServiceKey]: ...
    @property
    def updated(self) -> Sequence[ServiceKey]: ...
    @property
    def removed(self) -> Sequence[ServiceKey]: ...


class ServiceWriter(Protocol):
    """What the agent needs of a :class:`socklb.Balancer`: a full sync, a
    partial batch, the services programmed, and the node's addresses."""

    def sync(self, services: Iterable[Service], *, batch: Optional[int] = None) -> Changes: ...

    def apply(
        self, upserts: Iterable[Service] = (), removals: Iterable[ServiceKey] = (), *, missing_ok: bool = False
    ) -> Changes: ...

    def services(self) -> List[Service]: ...

    def set_node_addresses(self, addresses: Iterable[str]) -> None: ...

    def refresh_node_addresses(self) -> List[str]: ...


SvcId = Tuple[str, str]  # (namespace, name) of a Service
Obj = Dict[str, Any]

_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)")


def parse_trigger_time(value: Any) -> Optional[float]:
    """An RFC 3339 time (``RFC3339Nano``, as the EndpointSlice controller writes
    it) as seconds since the epoch, or None when it is not one.

    >>> parse_trigger_time("2026-12-01T10:00:00.25Z") - parse_trigger_time("2026-12-01T10:00:00Z")
    0.25
    >>> parse_trigger_time("2026-12-01T11:00:00+01:00") == parse_trigger_time("2026-12-01T10:00:00Z")
    True
    >>> parse_trigger_time("yesterday") is None
    True
    """
    if not isinstance(value, str):
        return None
    m = _RFC3339.fullmatch(value.strip())
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    if frac:
        t += int(frac) / 10 ** len(frac)
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        t -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return t


class Samples:
    """Observations of one duration: count, sum, and quantiles of the last ``keep``.

    >>> s = Samples()
    >>> for v in (0.001, 0.002, 0.003, 0.010):
    ...     s.add(v)
    >>> s.summary()["count"], s.quantile(0.5), s.summary()["max"]
    (4, 0.002, 0.01)
    """

    def __init__(self, keep: int = 100_000) -> None:
        self._recent: Deque[float] = deque(maxlen=keep)
        self.count = 0
        self.total = 0.0
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._recent.append(value)
            self.count += 1
            self.total += value

    def values(self) -> List[float]:
        with self._lock:
            return list(self._recent)

    def clear(self) -> None:
        with self._lock:
            self._recent.clear()
            self.count, self.total = 0, 0.0

    def quantile(self, q: float, values: Optional[List[float]] = None) -> Optional[float]:
        """The ``q`` quantile (nearest rank) of the recent observations, or None."""
        v = sorted(self.values() if values is None else values)
        if not v:
            return None
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

    def summary(self) -> Dict[str, Optional[float]]:
        v = sorted(self.values())
        with self._lock:
            count, total = self.count, self.total
        out: Dict[str, Optional[float]] = {"count": count, "sum": total}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            out[name] = self.quantile(q, v) if v else None
        out["max"] = v[-1] if v else None
        with self._lock:
            out["last"] = self._recent[-1] if self._recent else None
        return out


# What translate() reads of each kind; compact() keeps only that.  None: the whole value.
_Schema = Optional[Dict[str, Any]]
_NAMES: _Schema = {"name": None}
_LABELS_READ = (LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, LABEL_HEADLESS)
_SERVICE_SCHEMA: Dict[str, Any] = {
    "kind": None,
    "spec": {
        "type": None,
        "clusterIP": None,
        "clusterIPs": None,
        "externalIPs": None,
        "sessionAffinity": None,
        "sessionAffinityConfig": None,
        "internalTrafficPolicy": None,
        "externalTrafficPolicy": None,
        "ports": {"name": None, "protocol": None, "port": None, "nodePort": None},
    },
    "status": {"loadBalancer": {"ingress": {"ip": None, "ipMode": None}}},
}
_SLICE_SCHEMA: Dict[str, Any] = {
    "kind": None,
    "addressType": None,
    "ports": {"name": None, "protocol": None, "port": None},
    "endpoints": {
        "addresses": None,
        "conditions": {"ready": None, "serving": None, "terminating": None},
        "nodeName": None,
        "hints": {"forZones": _NAMES, "forNodes": _NAMES},
    },
}
_CONDITION_DEFAULTS = (("ready", True), ("serving", True), ("terminating", False))


def _node_address(text: str) -> bool:
    """Whether a Node object's address is one NodePorts can answer on."""
    try:
        return usable_node_address(text)
    except ValueError:
        logger.warning("node address %r is not an IP address: ignored", text)
        return False


def _prune(value: Any, schema: _Schema) -> Any:
    """``value`` with only the keys ``schema`` names (recursively, into lists of
    objects); a value of an unexpected type is kept as it is, for the
    translation to judge."""
    if schema is None:
        return value
    if isinstance(value, dict):
        return {k: _prune(v, schema[k]) for k, v in value.items() if k in schema}
    if isinstance(value, list):
        return [_prune(v, schema) for v in value]
    return value


def _small_meta(meta: Any) -> Any:
    if not isinstance(meta, dict):
        return meta
    out = {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta}
    if isinstance(out.get("namespace"), str):
        out["namespace"] = sys.intern(out["namespace"])
    labels = meta.get("labels")
    if isinstance(labels, dict):
        kept = {k: labels[k] for k in _LABELS_READ if k in labels}
        if kept:
            out["labels"] = kept
    elif labels is not None:
        out["labels"] = labels
    ann = meta.get("annotations")
    if isinstance(ann, dict) and ANNOTATION_TRIGGER_TIME in ann:
        out["annotations"] = {ANNOTATION_TRIGGER_TIME: ann[ANNOTATION_TRIGGER_TIME]}
    return out


# Deflate with a preset dictionary (RFC 1951 raw deflate, as zlib's zdict): what
# compact JSON of Services and EndpointSlices is made of, so that even a small object
# compresses (a slice of 10 endpoints to ~100 bytes, a ClusterIP Service to ~40)
# without a dictionary of its own.  Generic Kubernetes text only: keys and enum values
# (sort_keys order), never names of a particular cluster.  Changing it is safe: what
# it makes lives only in the process.
_ZDICT = (
    b'"hints":{"forNodes":[{"name":""}],"forZones":[{"name":""}]},'
    b'"conditions":{"ready":false,"serving":true,"terminating":true},'
    b'{"addressType":"IPv6","endpoints":[{"addresses":["fd'
    b'"externalIPs":["'
    b'"ipFamilies":["IPv4","IPv6"],"sessionAffinityConfig":{"clientIP":{"timeoutSeconds":10800}}'
    b'"sessionAffinity":"ClientIP","type":"NodePort"},"externalTrafficPolicy":"Local","'
    b'"status":{"loadBalancer":{"ingress":[{"ip":"","ipMode":"VIP"}]}},"type":"LoadBalancer"'
    b'"ports":[{"name":"https","nodePort":3'
    b'{"kind":"Service","metadata":{"name":"","namespace":"default"},"spec":{"clusterIP":"10.'
    b'","clusterIPs":["10.'
    b'"],"internalTrafficPolicy":"Cluster","ports":[{"name":"http","port":80,"protocol":"TCP"}],'
    b'"sessionAffinity":"None","type":"ClusterIP"},"status":{"loadBalancer":{}}}'
    b'{"addressType":"IPv4","endpoints":[{"addresses":["10.'
    b'"],"conditions":{},"nodeName":"'
    b'"},{"addresses":["10.'
    b'"],"conditions":{},"nodeName":"'
    b'"}],"kind":"EndpointSlice","metadata":{"labels":{"kubernetes.io/service-name":"'
    b'"},"name":"'
    b'","namespace":"'
    b'"},"ports":[{"name":"http","port":8080,"protocol":"TCP"}]}'
)
_WBITS = -12  # raw deflate (no header, no checksum), a 4 KiB window: the dictionary and a slice or two
_DEFLATED_MARK = b"\x01"  # what a deflated Compact.data starts with (compact JSON starts with "{")
_DEFLATE = zlib.compressobj(6, zlib.DEFLATED, _WBITS, 2, zlib.Z_DEFAULT_STRATEGY, _ZDICT)  # copied, not used


def _deflate(data: bytes) -> bytes:
    c = _DEFLATE.copy()  # a copy of a primed compressor: cheaper than loading the dictionary again
    return _DEFLATED_MARK + c.compress(data) + c.flush()


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj(_WBITS, _ZDICT)
    out = d.decompress(memoryview(data)[1:]) + d.flush()
    if not d.eof:
        raise ValueError("a truncated Compact")
    return out


class Compact:
    """A Service or EndpointSlice as the agent keeps it (see :func:`compact`):
    its resourceVersion, what the translation reads of it as compact JSON
    (deflated with a preset dictionary when that is shorter), the Service a
    slice belongs to and the last-change trigger time.  A few percent of the
    memory of the object as a dict.  Read like a dict for ``"metadata"`` and
    ``"compact"``."""

    __slots__ = ("_rv", "data", "owner", "trigger")

    def __init__(self, rv: str, data: bytes, owner: Optional[SvcId], trigger: Optional[float]) -> None:
        self._rv = _rv_value(rv)
        self.data = data
        """Compact JSON, or deflated compact JSON after a ``0x01`` byte."""
        self.owner = owner
        self.trigger = trigger

    @property
    def rv(self) -> str:
        """The resourceVersion."""
        rv = self._rv
        return rv if isinstance(rv, str) else str(rv)

    def json(self) -> bytes:
        raw = self.data
        return _inflate(raw) if raw[:1] == _DEFLATED_MARK else raw

    def get(self, key: str, default: Any = None) -> Any:
        if key == "metadata":
            meta = json.loads(self.json()).get("metadata")
            return {**(meta if isinstance(meta, dict) else {}), "resourceVersion": self.rv}
        if key == "compact":
            return self.json()
        return default

    def __getitem__(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value


class KeptSlice(SliceRead):
    """An EndpointSlice as the agent keeps it (see :func:`keep_slice`): the
    slice as the translation reads it (a
    :class:`~socklb.kubernetes.translation.SliceRead`, read once per change
    and given to every translation of its Service as it is), with its
    resourceVersion, the Service it is filed under (its label, ``owner``) and
    the last-change trigger time."""

    __slots__ = ("_rv", "owner", "trigger")

    def __init__(self, rv: str, owner: Optional[SvcId], trigger: Optional[float]) -> None:
        super().__init__()
        self._rv = _rv_value(rv)
        self.owner = owner
        self.trigger = trigger

    @property
    def rv(self) -> str:
        """The resourceVersion."""
        rv = self._rv
        return rv if isinstance(rv, str) else str(rv)


def keep_slice(obj: Obj) -> KeptSlice:
    """An EndpointSlice as the agent keeps it: read for the translation once, here.

    >>> k = keep_slice({"metadata": {"name": "a", "namespace": "n", "resourceVersion": "7",
    ...                              "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
    ...                 "ports": [{"port": 8080}], "endpoints": [{"addresses": ["10.1.2.3"]}]})
    >>> k.rv, k.owner, k.ports, k.addresses
    ('7', ('n', 'web'), ((('', 'TCP'), 8080),), b'\\n\\x01\\x02\\x03')
    """
    meta = _meta(obj)
    ann = meta.get("annotations")
    trigger = parse_trigger_time(ann.get(ANNOTATION_TRIGGER_TIME)) if isinstance(ann, dict) else None
    rv = meta.get("resourceVersion")
    kept = KeptSlice(str(rv) if rv is not None else "", _slice_owner(obj), trigger)
    read_slice(obj, into=kept)
    return kept


def _rv_value(rv: str) -> Union[int, str]:
    # A resourceVersion is opaque, but etcd's are decimal revisions: kept as an int
    # (32 bytes instead of 64) when it reads back as the same text.
    decimal = rv.isascii() and rv.isdigit() and len(rv) < 19 and str(int(rv)) == rv
    return int(rv) if decimal else rv


def compact(obj: Obj, kind: str = "EndpointSlice") -> Compact:
    """A Service or EndpointSlice as the agent keeps it: a :class:`Compact` of
    its resourceVersion and what :func:`~socklb.kubernetes.translate` reads of
    it (the name, namespace and labels it reads, the spec, ports and endpoints
    it reads) as compact JSON; :func:`expand` gives the object back.  ``kind``
    is ``"Service"`` or ``"EndpointSlice"`` (list items carry no kind).
    Conditions equal to their defaults (ready and serving true, terminating
    false) are left out.

    >>> s = compact({"metadata": {"name": "a", "namespace": "n", "uid": "1234", "resourceVersion": "7",
    ...              "labels": {"kubernetes.io/service-name": "web", "app": "web"}}, "addressType": "IPv4",
    ...              "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": True},
    ...                             "targetRef": {"kind": "Pod", "name": "web-1"}}]})
    >>> s["metadata"]
    {'labels': {'kubernetes.io/service-name': 'web'}, 'name': 'a', 'namespace': 'n', 'resourceVersion': '7'}
    >>> expand(s)["endpoints"], s.owner
    ([{'addresses': ['10.1.2.3'], 'conditions': {}}], ('n', 'web'))
    """
    schema = _SLICE_SCHEMA if kind == "EndpointSlice" else _SERVICE_SCHEMA
    slim = _prune(obj, schema)
    meta = _small_meta(obj.get("metadata"))
    trigger = None
    owner = None
    if isinstance(meta, dict):
        ann = meta.pop("annotations", None)
        trigger = parse_trigger_time(ann.get(ANNOTATION_TRIGGER_TIME)) if isinstance(ann, dict) else None
        rv = meta.pop("resourceVersion", "")
        owner = _slice_owner({"metadata": meta}) if kind == "EndpointSlice" else None
    else:
        rv = ""
    slim["metadata"] = meta
    for e in slim.get("endpoints") or ():
        cond = e.get("conditions") if isinstance(e, dict) else None
        if isinstance(cond, dict):
            for k, default in _CONDITION_DEFAULTS:
                if k in cond and cond[k] is default:
                    del cond[k]
    try:  # sorted keys: the order the dictionary was written in, whatever order the API sent
        text = json.dumps(slim, separators=(",", ":"), sort_keys=True)
    except TypeError:  # keys of mixed types (a malformed object): as they came, for the translation to judge
        text = json.dumps(slim, separators=(",", ":"))
    data = text.encode()
    small = _deflate(data)
    if len(small) < len(data):
        data = small
    return Compact(str(rv) if rv is not None else "", data, owner, trigger)


def expand(obj: Any) -> Obj:
    """The object :func:`compact` made smaller, as translate reads it (others as they are)."""
    if isinstance(obj, Compact):
        full: Obj = json.loads(obj.json())
        meta = full.get("metadata")
        if isinstance(meta, dict):
            meta["resourceVersion"] = obj.rv
        return full
    out: Obj = obj
    return out


def _meta(obj: Optional[Obj]) -> Dict[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _rv_of(obj: Any) -> Any:
    if isinstance(obj, (Compact, KeptSlice)):
        return obj._rv  # as kept: no new str
    return _meta(obj).get("resourceVersion")


def _slice_owner(obj: Optional[Obj]) -> Optional[SvcId]:
    """The Service a slice belongs to, (namespace, name), from its label."""
    meta = _meta(obj)
    labels = meta.get("labels")
    owner = labels.get(LABEL_SERVICE_NAME) if isinstance(labels, dict) else None
    if not isinstance(owner, str) or not owner:
        return None
    ns = meta.get("namespace")
    return (ns if isinstance(ns, str) and ns else "default", owner)


def _first(pair: Tuple[Any, Any]) -> Any:
    return pair[0]


def _owner_of(obj: Any) -> Optional[SvcId]:
    return obj.owner if isinstance(obj, (Compact, KeptSlice)) else _slice_owner(obj)


def _service_id(key: Optional[Tuple[str, str]]) -> Optional[SvcId]:
    if key is None:
        return None
    return key if key[0] else ("default", key[1])  # the store's own key: no second tuple


def _trigger_time(obj: Any) -> Optional[float]:
    if isinstance(obj, (Compact, KeptSlice)):
        return obj.trigger
    ann = _meta(obj).get("annotations")
    return parse_trigger_time(ann.get(ANNOTATION_TRIGGER_TIME)) if isinstance(ann, dict) else None


class Agent:
    """Keep ``balancer`` programmed with the Services of the cluster ``api_client`` talks to, for ``node_name``.

    :param balancer: a :class:`socklb.Balancer` (attached by the caller to the
        cgroups it should balance), or anything with the methods of
        :class:`ServiceWriter`; the agent only programs services.
    :param node_name: this node's name (endpoints' ``nodeName``, the Node object read for its zone).
    :param api_client: a ``kubernetes.client.ApiClient``.
    :param proxy_name: this proxy's ``service.kubernetes.io/service-proxy-name`` (None: the Services without it).
    :param min_sync_period: seconds between the starts of two applies (kube-proxy's ``minSyncPeriod``).
    :param healthz_port: serve ``/healthz`` and ``/metrics`` there (0: any free port; None: no server).
    :param healthz_address: the address to serve on.
    :param healthz_timeout: a change pending longer than this makes ``/healthz`` answer 503.
    :param algorithm, apply_external_traffic_policy: given to :func:`~socklb.kubernetes.translate`.
    :param reflector_options: extra keyword arguments for every :class:`Reflector`
        (``watch_timeout``, ``resync_period``, ``page_size``, backoff, ...).
    :param node_timeout: how long the first sync waits for this node's Node object
        (its zone); after that it goes on without a zone (no zone hints are used)
        until the Node can be read, and re-syncs then.
    :param compact_objects: keep Services as :func:`compact` makes them (what
        the translation reads, as compact JSON: a tenth of the memory of the
        decoded objects) and EndpointSlices as :func:`keep_slice` does (read for
        the translation once, when they arrive: their endpoints are the
        backends the translated services share); the reflectors' stores then
        hold that form.
    :param node_addresses: where the balancer's node addresses (on which
        NodePorts answer) come from: ``"node"`` (default), the Node object's
        InternalIP and ExternalIP addresses, given to
        ``balancer.set_node_addresses`` when they change; ``"discover"``, the
        interfaces of the balancer's node network namespace, read again
        (``balancer.refresh_node_addresses``) at every full sync; ``"none"``:
        left to the caller.
    :param sync_batch: a full sync writes at most this many changed services at
        a time (``Balancer.sync(batch=...)``): the map rows of a first sync of
        50,000 services are never all in memory at once.  None: one write.
    :param freeze_gc: after each full sync, collect and then ``gc.freeze()``
        everything alive, so that Python's cyclic collector does not walk the
        agent's (and the balancer's) long-lived state on every full collection.
        Process-wide: for a process that is the agent (the ``socklb kubernetes``
        command sets it), not for a library user's process by default.
    """

    def __init__(
        self,
        balancer: ServiceWriter,
        *,
        node_name: str,
        api_client: Any,
        proxy_name: Optional[str] = None,
        min_sync_period: float = 0.01,
        healthz_port: Optional[int] = None,
        healthz_address: str = "127.0.0.1",
        healthz_timeout: float = 60.0,
        algorithm: Union[str, Algorithm] = Algorithm.RANDOM,
        apply_external_traffic_policy: bool = False,
        reflector_options: Optional[Dict[str, Any]] = None,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        node_timeout: float = 10.0,
        compact_objects: bool = True,
        freeze_gc: bool = False,
        node_addresses: str = "node",
        sync_batch: Optional[int] = 2048,
    ) -> None:
        if node_addresses not in ("node", "discover", "none"):
            raise ValueError(f"node_addresses must be 'node', 'discover' or 'none', not {node_addresses!r}")
        self.node_addresses = node_addresses
        self._node_addrs_given: Optional[List[str]] = None
        if not isinstance(node_name, str) or not node_name:
            raise ValueError("node_name must be a non-empty string")
        if min_sync_period < 0:
            raise ValueError("min_sync_period must not be negative")
        from kubernetes import client

        self.balancer = balancer
        self.node_name = node_name
        self.proxy_name = proxy_name
        self.min_sync_period = float(min_sync_period)
        self.healthz_timeout = float(healthz_timeout)
        self.algorithm = Algorithm(algorithm)
        self.apply_external_traffic_policy = apply_external_traffic_policy
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.node = Node(node_name)
        self.freeze_gc = freeze_gc
        self.sync_batch = sync_batch
        self.node_timeout = node_timeout
        self._started = math.inf
        self.max_full_delay = 60.0  # the longest a full sync waits for another resource's re-list
        self._full_since = 0.0
        self.started_wall = time.time()

        # The collections are read through list functions made from the ApiClient: the
        # generated API classes of recent clients import hundreds of models (20 MiB).
        paths = ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/nodes")
        made = {path: list_function(api_client, path) for path in paths}
        lists: Dict[str, Callable[..., Any]] = {p: f for p, f in made.items() if f is not None}
        if len(lists) < len(paths):  # an older client: its generated functions
            core = client.CoreV1Api(api_client)
            discovery = client.DiscoveryV1Api(api_client)
            lists = {
                "/api/v1/services": core.list_service_for_all_namespaces,
                "/apis/discovery.k8s.io/v1/endpointslices": discovery.list_endpoint_slice_for_all_namespaces,
                "/api/v1/nodes": core.list_node,
            }
        opts = dict(reflector_options or {})
        opts.pop("transform", None)
        keep: Dict[str, Optional[Callable[[Obj], Any]]] = {"Service": None, "EndpointSlice": None}
        if compact_objects:
            keep = {"Service": lambda o: compact(o, "Service"), "EndpointSlice": keep_slice}
        self.services_reflector = Reflector(
            lists["/api/v1/services"],
            self._on_service,
            name="services",
            transform=keep["Service"],
            **opts,
        )
        self.slices_reflector = Reflector(
            lists["/apis/discovery.k8s.io/v1/endpointslices"],
            self._on_slice,
            name="endpointslices",
            transform=keep["EndpointSlice"],
            **opts,
        )
        node_opts = dict(opts)
        node_opts["list_kwargs"] = {**opts.get("list_kwargs", {}), "field_selector": f"metadata.name={node_name}"}
        self.node_reflector = Reflector(lists["/api/v1/nodes"], self._on_node, name="node", **node_opts)
        self._reflectors = (self.services_reflector, self.slices_reflector, self.node_reflector)

        # Shared with the reflector threads, under _cond.
        self._cond = threading.Condition()
        self._dirty: Set[SvcId] = set()
        self._full = False
        self._triggers: Dict[SvcId, List[float]] = {}
        self._pending_since: Optional[float] = None  # monotonic time of the oldest change not applied
        self._synced: Set[str] = set()
        # Kept small (tuples, one owner without a list): at 50,000 Services these
        # indexes are a good part of the agent's memory.
        # (A slice's owner is not indexed: the reflector hands over the object it replaces.)
        self._slices_of: Dict[SvcId, Tuple[Tuple[str, str], ...]] = {}

        # The apply thread's own state.
        self._wanted: Dict[SvcId, Tuple[Service, ...]] = {}
        self._claims: Dict[ServiceKey, Union[SvcId, List[SvcId]]] = {}  # a list only when several claim it
        self._no_local: Dict[SvcId, int] = {}
        self._cache: Dict[SvcId, Tuple[Any, Tuple[Service, ...], int]] = {}
        self._cache_node: Optional[Node] = None
        self._retry: Set[ServiceKey] = set()
        self._retry_failures = 0
        self._retry_at = 0.0
        self._last_apply_start = -math.inf

        self.first_sync = threading.Event()
        self.last_apply_wall: Optional[float] = None
        self.last_apply_monotonic: Optional[float] = None
        self.programming_latency = Samples()
        self.apply_durations = Samples()
        self.full_sync_durations = Samples()
        self.counts: Dict[str, int] = dict.fromkeys(
            (
                "service_events",
                "endpointslice_events",
                "node_events",
                "relists",
                "applies",
                "full_syncs",
                "services_translated",
                "upserts",
                "removes",
                "writes_failed",
                "apply_errors",
                "notes",
            ),
            0,
        )
        self._busy = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self._healthz_port = healthz_port
        self._healthz_address = healthz_address

    # -- running -----------------------------------------------------------

    def start(self) -> None:
        """Start the reflectors, the apply thread and the health server; returns at once."""
        if self._thread is not None:
            raise RuntimeError("the agent was started already")
        if self._healthz_port is not None:
            self._serve_health(self._healthz_address, self._healthz_port)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="socklb-agent", daemon=True)
        self._thread.start()
        for r in self._reflectors:
            r.start()

    def run(self) -> None:
        """Start and block until :meth:`stop` (from another thread or a signal handler)."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching and applying (the balancer is left as it is, for its owner to close)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for r in self._reflectors:
            if r._thread is not None:
                r.stop(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_synced(self, timeout: Optional[float] = None) -> bool:
        """Wait for the first full sync; True if it happened."""
        return self.first_sync.wait(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending (every change seen so far is applied); True if so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if self.first_sync.is_set() and not self._dirty and not self._full and self._busy == 0:
                    return True
            time.sleep(0.005)
        return False

    # -- events (reflector threads) ------------------------------------------

    def _mark(self, ids: Iterable[Optional[SvcId]], trigger: Optional[float] = None) -> None:
        with self._cond:
            for s in ids:
                if s is None:
                    continue
                self._dirty.add(s)
                if trigger is not None and trigger >= self.started_wall:
                    t = self._triggers.setdefault(s, [])
                    if trigger not in t:
                        t.append(trigger)
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            self._cond.notify_all()

    def _synced_event(self, name: str) -> None:
        with self._cond:
            self._synced.add(name)
            self._full = True
            self.counts["relists"] += 1
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            self._cond.notify_all()

    def _on_service(self, e: Event) -> None:
        if e.type == "SYNCED":
            self._synced_event("services")
            return
        self.counts["service_events"] += 1
        self._mark([_service_id(e.key)])

    def _on_slice(self, e: Event) -> None:
        if e.type == "SYNCED":
            self._synced_event("endpointslices")
            return
        self.counts["endpointslice_events"] += 1
        key = e.key
        assert key is not None
        obj: Any = e.obj
        new_owner = None if e.type == "DELETED" else _owner_of(obj)
        old_owner = None if e.old is None else _owner_of(e.old)  # what the slice was filed under
        with self._cond:
            if old_owner is not None:
                keys = tuple(k for k in self._slices_of.get(old_owner, ()) if k != key)
                if keys:
                    self._slices_of[old_owner] = keys
                else:
                    self._slices_of.pop(old_owner, None)
            if new_owner is not None:
                self._slices_of[new_owner] = (*self._slices_of.get(new_owner, ()), key)
        self._mark({old_owner, new_owner}, None if e.type == "DELETED" else _trigger_time(e.obj))

    def _on_node(self, e: Event) -> None:
        if e.type == "SYNCED":
            self._synced_event("node")
            return
        self.counts["node_events"] += 1
        node = Node(self.node_name)
        if e.type != "DELETED" and e.obj is not None:
            try:
                node = Node.from_object(e.obj)
            except Exception as err:  # a malformed Node: keep the name, lose the zone
                logger.warning("node %s: cannot read the Node object (%s): no zone", self.node_name, err)
        with self._cond:
            changed = node != self.node
            self.node = node
            if changed:
                logger.info("node %s: zone %s", node.name, node.zone)
                self._full = True
                self._cond.notify_all()

    # -- applying (the agent's thread) ----------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set():
                    ready = {"services", "endpointslices"} <= self._synced and (
                        "node" in self._synced or time.monotonic() - self._started > self.node_timeout
                    )
                    work = ready and (self._dirty or self._full)
                    if work and self._full and any(r.listing for r in self._reflectors):
                        # Another resource is being listed again too (an API server restart,
                        # a compaction): one full sync after both, not one after each.
                        self._full_since = self._full_since or time.monotonic()
                        if time.monotonic() - self._full_since < self.max_full_delay:
                            self._cond.wait(0.05)
                            continue
                    self._full_since = 0.0
                    retry = ready and self._retry and time.monotonic() >= self._retry_at
                    if work or retry:
                        wait = self._last_apply_start + self.min_sync_period - time.monotonic()
                        if wait <= 0:
                            break
                    else:
                        wait = 1.0
                        if ready and self._retry:
                            wait = max(0.001, min(wait, self._retry_at - time.monotonic()))
                    self._cond.wait(wait)
                if self._stop.is_set():
                    return
                full, dirty, triggers = self._full, self._dirty, self._triggers
                self._full, self._dirty, self._triggers = False, set(), {}
                node = self.node
                self._busy = 1
            self._last_apply_start = time.monotonic()
            try:
                if full:
                    self._apply_full(node, triggers)
                else:
                    self._apply_dirty(dirty, node, triggers)
            except Exception:
                self.counts["apply_errors"] += 1
                logger.exception("applying changes failed; retrying")
                with self._cond:  # try the whole thing again
                    self._full = self._full or full
                    self._dirty |= dirty
                    for s, t in triggers.items():
                        self._triggers.setdefault(s, []).extend(t)
                self._stop.wait(self.retry_initial)
            finally:
                with self._cond:
                    self._busy = 0
                    if not self._dirty and not self._full and not self._retry:
                        self._pending_since = None  # everything seen is applied

    def _translate(
        self, sid: SvcId, node: Node, slices_of: Dict[SvcId, Tuple[Tuple[str, str], ...]]
    ) -> Tuple[Service, ...]:
        """The frontends of one Service.  The result is kept with the resourceVersions
        it came from: the same Service and slices (and node) give it again without
        translating, which makes the full sync after a re-list cheap."""
        store = self.services_reflector.store
        obj = store.get(sid) or (store.get(("", sid[1])) if sid[0] == "default" else None)
        if obj is None:
            self._no_local.pop(sid, None)
            self._cache.pop(sid, None)
            return ()
        sstore = self.slices_reflector.store
        found = [(k, o) for k, o in ((k, sstore.get(k)) for k in slices_of.get(sid, ())) if o is not None]
        if node != self._cache_node:
            self._cache, self._cache_node = {}, node
        # One flat tuple of objects that exist anyway (the resourceVersions, the slices' keys).
        sig = (_rv_of(obj), *[x for k, o in sorted(found, key=_first) for x in (k, _rv_of(o))])
        hit = self._cache.get(sid)
        if hit is not None and hit[0] == sig and sig[0] is not None and sig[0] != "":
            frontends, no_local = hit[1], hit[2]
        else:
            t = translate_with_notes(
                [expand(obj)],
                [o if isinstance(o, KeptSlice) else expand(o) for _, o in found],
                node,
                self.proxy_name,
                algorithm=self.algorithm,
                apply_external_traffic_policy=self.apply_external_traffic_policy,
            )
            self.counts["services_translated"] += 1
            self.counts["notes"] += len(t.notes)
            frontends, no_local = tuple(t.services), len(t.no_local_endpoints)
            self._cache[sid] = (sig, frontends, no_local)
        if no_local:
            self._no_local[sid] = no_local
        else:
            self._no_local.pop(sid, None)
        return frontends

    def _value(self, key: ServiceKey) -> Optional[Service]:
        owners = self._claims.get(key)
        if not owners:
            return None
        owner = min(owners) if isinstance(owners, list) else owners
        for s in self._wanted[owner]:
            if s.key == key:
                return s
        return None

    def _set_wanted(self, sid: SvcId, new: Tuple[Service, ...]) -> None:
        for s in self._wanted.pop(sid, ()):
            k = s.key
            owners = self._claims.get(k)
            if owners is None:
                continue
            if isinstance(owners, list):
                if sid in owners:
                    owners.remove(sid)
                if len(owners) == 1:
                    self._claims[k] = owners[0]
                elif not owners:
                    del self._claims[k]
            elif owners == sid:
                del self._claims[k]
        if new:
            self._wanted[sid] = new
            for s in new:
                k = s.key
                owners = self._claims.get(k)
                if owners is None:
                    self._claims[k] = sid
                elif isinstance(owners, list):
                    owners.append(sid)
                else:
                    self._claims[k] = [owners, sid]

    def _apply_dirty(self, dirty: Set[SvcId], node: Node, triggers: Dict[SvcId, List[float]]) -> None:
        t0 = time.monotonic()
        with self._cond:
            slices_of = {s: self._slices_of.get(s, ()) for s in dirty}
        translated = {s: self._translate(s, node, slices_of) for s in dirty}
        affected: Set[ServiceKey] = set(self._retry)
        for s, new in translated.items():
            affected.update(v.key for v in self._wanted.get(s, ()))
            affected.update(v.key for v in new)
        before = {k: self._value(k) for k in affected}
        for s, new in translated.items():
            self._set_wanted(s, new)
        failed = self._write(affected, before, force=set(self._retry))
        self._after_apply(t0, triggers, failed, full=False)

    def _write(
        self, keys: Iterable[ServiceKey], before: Dict[ServiceKey, Optional[Service]], force: Set[ServiceKey]
    ) -> Set[ServiceKey]:
        """Write the frontends among ``keys`` whose value differs from ``before``
        (or that are in ``force``) with one :meth:`Balancer.apply`; if that batch
        is refused, each on its own, so that one bad service holds back only
        itself.  Returns the keys that failed (retried later)."""
        upserts: List[Service] = []
        removals: List[ServiceKey] = []
        for k in keys:
            new = self._value(k)
            if new == before.get(k) and k not in force:
                continue
            if new is None:
                removals.append(k)
            else:
                upserts.append(new)
        if len(upserts) + len(removals) > 1:
            try:
                self.balancer.apply(upserts=upserts, removals=removals, missing_ok=True)
                self.counts["upserts"] += len(upserts)
                self.counts["removes"] += len(removals)
                return set()
            except Exception as e:
                logger.warning(
                    "programming %d services at once failed (%s: %s): programming them one by one",
                    len(upserts) + len(removals),
                    type(e).__name__,
                    e,
                )
        failed: Set[ServiceKey] = set()
        for u in upserts:
            failed |= self._write_one([u], [])
        for r in removals:
            failed |= self._write_one([], [r])
        return failed

    def _write_one(self, upserts: List[Service], removals: List[ServiceKey]) -> Set[ServiceKey]:
        try:
            self.balancer.apply(upserts=upserts, removals=removals, missing_ok=True)
        except Exception as e:
            what = upserts[0] if upserts else removals[0]
            self.counts["writes_failed"] += 1
            logger.warning("programming %s failed: %s: %s (will retry)", what, type(e).__name__, e)
            return {upserts[0].key if upserts else removals[0]}
        self.counts["upserts"] += len(upserts)
        self.counts["removes"] += len(removals)
        return set()

    def _program_node(self, node: Node) -> None:
        """Give the balancer the node's addresses (see ``node_addresses``);
        a failure is logged, the services are programmed anyway."""
        try:
            if self.node_addresses == "discover":
                self.balancer.refresh_node_addresses()
            elif self.node_addresses == "node":
                addrs = sorted({a for a in node.addresses if _node_address(a)})
                if addrs != self._node_addrs_given:
                    self.balancer.set_node_addresses(addrs)
                    self._node_addrs_given = addrs
                    logger.info("node %s: NodePorts on %s", node.name, ", ".join(addrs) or "loopback only")
        except Exception as e:
            logger.warning("node %s: cannot give the balancer its addresses (%s: %s)", node.name, type(e).__name__, e)

    def _apply_full(self, node: Node, triggers: Dict[SvcId, List[float]]) -> None:
        t0 = time.monotonic()
        self._program_node(node)
        with self._cond:
            slices_of = dict(self._slices_of)  # the tuples are never changed, only replaced
        keys = self.services_reflector.keys()
        self._wanted, self._claims = {}, {}
        self._no_local = {}
        store = self.services_reflector.store
        for gone in [s for s in self._cache if s not in store and (s[0] != "default" or ("", s[1]) not in store)]:
            del self._cache[gone]
        for k in keys:
            sid = k if k[0] else ("default", k[1])
            self._set_wanted(sid, self._translate(sid, node, slices_of))
        del keys
        wanted = [v for v in (self._value(k) for k in self._claims) if v is not None]
        failed: Set[ServiceKey] = set()
        try:
            result = self.balancer.sync(wanted, batch=self.sync_batch)
            self.counts["upserts"] += len(result.added) + len(result.updated)
            self.counts["removes"] += len(result.removed)
        except Exception as e:
            # Too many services, a kernel error: program what fits one by one.
            logger.warning("full sync failed (%s: %s): programming the services one by one", type(e).__name__, e)
            self.counts["writes_failed"] += 1
            # Against what is programmed: unchanged services are not rewritten, and the
            # ones nobody wants any more are removed.
            programmed: Dict[ServiceKey, Optional[Service]] = {s.key: s for s in self.balancer.services()}
            failed = self._write(set(self._claims) | set(programmed), programmed, force=set())
        self.counts["full_syncs"] += 1
        self._after_apply(t0, triggers, failed, full=True)
        if self.freeze_gc:
            # What the translation and the balancer just built lives until the next full
            # sync: keep the cyclic collector from walking it again and again (at 50,000
            # services a full collection pauses the agent for a second or more).
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        # The LIST pages and the translations' temporaries are freed by now: give the
        # free pages at the top of the heap and inside it back to the system.
        _malloc_trim()
        self.first_sync.set()

    def _after_apply(self, t0: float, triggers: Dict[SvcId, List[float]], failed: Set[ServiceKey], full: bool) -> None:
        now_wall, now = time.time(), time.monotonic()
        for times in triggers.values():
            for t in times:
                self.programming_latency.add(max(0.0, now_wall - t))
        (self.full_sync_durations if full else self.apply_durations).add(now - t0)
        self.counts["applies"] += 1
        self._retry = failed
        if failed:
            self._retry_failures += 1
            delay = min(self.retry_max, self.retry_initial * 2 ** (self._retry_failures - 1))
            self._retry_at = now + delay
        else:
            self._retry_failures = 0
            self.last_apply_wall, self.last_apply_monotonic = now_wall, now

    # -- health and statistics --------------------------------------------------

    def healthy(self) -> Tuple[bool, Dict[str, Any]]:
        """kube-proxy's healthz rule: synced once, and no change waiting longer than ``healthz_timeout``."""
        now = time.monotonic()
        with self._cond:
            pending = self._pending_since
        stale = pending is not None and now - pending > self.healthz_timeout
        ok = self.first_sync.is_set() and not stale and not self._stop.is_set()
        last = self.last_apply_wall
        return ok, {
            "lastUpdated": _iso(last) if last else None,
            "currentTime": _iso(time.time()),
            "synced": self.first_sync.is_set(),
            "pendingSeconds": round(now - pending, 3) if pending is not None else 0.0,
            "nodeName": self.node_name,
            "nodeZone": self.node.zone,
        }

    def stats(self) -> Dict[str, Any]:
        """What the agent measured and counted (see the module documentation)."""
        with self._cond:
            pending = len(self._dirty) + (1 if self._full else 0)
        return {
            "network_programming_seconds": self.programming_latency.summary(),
            "apply_seconds": self.apply_durations.summary(),
            "full_sync_seconds": self.full_sync_durations.summary(),
            "last_apply_time": self.last_apply_wall,
            "services": len(self._wanted),
            "frontends": len(self._claims),
            "no_local_endpoints": sum(self._no_local.values()),
            "pending_changes": pending,
            "retrying": len(self._retry),
            "reflectors": {r.name: vars(r.stats).copy() for r in self._reflectors},
            **self.counts,
        }

    def metrics(self) -> str:
        """The statistics in the Prometheus text format (summaries with quantiles,
        counters), followed by the balancer's own metrics (:mod:`socklb.ops.metrics`)
        when ``socklb[metrics]`` is installed."""
        st = self.stats()
        lines: List[str] = []
        for name, key in (
            ("socklb_network_programming_duration_seconds", "network_programming_seconds"),
            ("socklb_sync_proxy_rules_duration_seconds", "apply_seconds"),
            ("socklb_sync_full_duration_seconds", "full_sync_seconds"),
        ):
            s = st[key]
            lines.append(f"# TYPE {name} summary")
            for q in ("p50", "p90", "p99"):
                if s[q] is not None:
                    lines.append(f'{name}{{quantile="0.{q[1:]}"}} {s[q]:.6f}')
            lines += [f"{name}_sum {s['sum']:.6f}", f"{name}_count {s['count']}"]
        for key in self.counts:
            lines += [f"# TYPE socklb_agent_{key}_total counter", f"socklb_agent_{key}_total {st[key]}"]
        for key in ("services", "frontends", "no_local_endpoints", "pending_changes"):
            lines += [f"# TYPE socklb_agent_{key} gauge", f"socklb_agent_{key} {st[key]}"]
        if st["last_apply_time"]:
            lines.append(f"socklb_sync_proxy_rules_last_timestamp_seconds {st['last_apply_time']:.3f}")
        text = "\n".join(lines) + "\n"
        from socklb.balancer import Balancer

        if not isinstance(self.balancer, Balancer):
            return text  # a stand-in (tests): no datapath to report
        try:
            from prometheus_client import generate_latest

            from socklb.ops import metrics as balancer_metrics
        except ImportError:  # without socklb[metrics]: the agent's own figures only
            return text
        # The balancer's datapath metrics (socklb.ops.metrics) on the same endpoint.
        return text + generate_latest(balancer_metrics.registry(self.balancer)).decode()

    @property
    def healthz_port(self) -> Optional[int]:
        """The port /healthz is served on (when asked for port 0, the one chosen)."""
        return self._httpd.server_address[1] if self._httpd is not None else None

    def _serve_health(self, address: str, port: int) -> None:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in ("/healthz", "/livez"):
                    ok, body = agent.healthy()
                    data, code, ctype = json.dumps(body).encode(), 200 if ok else 503, "application/json"
                elif path == "/metrics":
                    data, code, ctype = agent.metrics().encode(), 200, "text/plain; version=0.0.4"
                else:
                    data, code, ctype = b"not found\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((address, port), Handler)
        self._httpd.daemon_threads = True
        self._http_thread = threading.Thread(target=self._httpd.serve_forever, name="socklb-healthz", daemon=True)
        self._http_thread.start()


def _load_malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        libc = ctypes.CDLL(None)
        trim: Callable[[int], int] = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def _malloc_trim() -> None:
    if _MALLOC_TRIM is not None:
        try:
            _MALLOC_TRIM(0)
        except Exception:  # never let housekeeping fail an apply
            pass


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
