"""Reading Kubernetes API objects: a dict in the API's JSON form or an official
client model (:func:`as_dict`), the fields :func:`~socklb.kubernetes.translate`
reads, each checked (a wrong one raises :class:`_Malformed` naming it), the
labels it honours, :class:`Node` (the node an agent programs) and
:class:`Note`, what was skipped and why, as it was logged."""

from __future__ import annotations

import logging
from collections import abc
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from socklb.errors import InvalidValueError

__all__ = [
    "LABEL_HEADLESS",
    "LABEL_SERVICE_NAME",
    "LABEL_SERVICE_PROXY_NAME",
    "LABEL_ZONE",
    "Node",
    "Note",
    "as_dict",
]

logger = logging.getLogger("socklb.kubernetes")

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_ZONE = "topology.kubernetes.io/zone"

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
