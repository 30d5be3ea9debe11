"""The Services and EndpointSlices as the node agent keeps them: only what the translation reads.

- an EndpointSlice as :func:`keep_slice` makes it, a :class:`KeptSlice`: read
  for the translation once, when it arrives
  (:class:`~socklb.kubernetes.translation.SliceRead`: its endpoints checked,
  as columns of plain values), then given to every translation of its
  Service as it is;
- a Service as :func:`compact` makes it, a :class:`Compact`: what the
  translation reads of it as compact JSON, deflated with a preset
  dictionary (about 40 bytes), read back with :func:`expand`.

Each keeps its resourceVersion, the Service it is filed under (a slice's
``kubernetes.io/service-name`` label) and the
``endpoints.kubernetes.io/last-change-trigger-time`` annotation.
"""

from __future__ import annotations

import json
import re
import sys
import zlib
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple, Union

from socklb.kubernetes.translation import (
    LABEL_HEADLESS,
    LABEL_SERVICE_NAME,
    LABEL_SERVICE_PROXY_NAME,
    SliceRead,
    read_slice,
)

__all__ = [
    "ANNOTATION_TRIGGER_TIME",
    "Compact",
    "KeptSlice",
    "compact",
    "expand",
    "keep_slice",
    "parse_trigger_time",
]

ANNOTATION_TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"

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
    if kept.service == kept.owner:
        kept.owner = kept.service  # one tuple for both
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
