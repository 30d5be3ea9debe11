"""The fake API server's state: the objects of each resource, their history
(one event per resourceVersion, as etcd keeps it), consistent paginated lists,
which events a watch is sent (the fan-out, selector transitions included), and
the faults it is told to inject.  :class:`~socklb.kubernetes.testing.FakeApiServer`
serves it over HTTP."""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from socklb.kubernetes.testing.selectors import matcher

__all__ = ["DEFAULT_RESOURCES", "Fault", "Key", "Obj", "Request", "Resource"]

Obj = Dict[str, Any]
Key = Tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Resource:
    """A kind of object the server holds: where it lives in the URL space."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


DEFAULT_RESOURCES = (
    Resource("", "v1", "services", "Service", True),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Resource("", "v1", "nodes", "Node", False),
)


@dataclass(frozen=True)
class Request:
    """One request the server received: method, path, query (last value of each parameter), time."""

    method: str
    path: str
    query: Dict[str, str]
    at: float = 0.0  # time.monotonic() when it arrived

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass
class Fault:
    """An error answer for the next ``times`` requests whose path contains ``match``
    (and that are watches or not, if ``watch`` is given)."""

    status: int
    times: int = 1
    retry_after: Optional[float] = None
    match: str = ""
    watch: Optional[bool] = None
    reason: str = ""


@dataclass
class _Event:
    rv: int
    type: str
    obj: Obj
    old: Optional[Obj]  # the object before this event, for selector transitions


def _item_text(obj: Obj) -> str:
    """An object's JSON as an item of a list (which carries no kind or apiVersion)."""
    return json.dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})


def list_text(store: _Store, body: Obj) -> bytes:
    """A ...List document from ``_list`` as JSON, each item's text the one made
    when it was stored (the same bytes ``json.dumps`` of the list would give)."""
    texts: List[str] = []
    for o in body["items"]:
        meta = o["metadata"]
        hit = store.texts.get((meta.get("namespace", ""), meta["name"]))
        texts.append(hit[1] if hit is not None and hit[0] is o else _item_text(o))
    head = {k: v for k, v in body.items() if k != "items"}
    return (json.dumps(head)[:-1] + ', "items": [' + ", ".join(texts) + "]}").encode()


@dataclass
class _Store:
    resource: Resource
    objects: Dict[Key, Obj] = field(default_factory=dict)
    # Each stored object's JSON as a list item (no kind or apiVersion), made when it
    # is stored: a LIST of 50,000 objects joins texts instead of encoding them again.
    texts: Dict[Key, Tuple[Obj, str]] = field(default_factory=dict)
    history: List[_Event] = field(default_factory=list)


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Gone(Exception):
    pass


def _fan_out(events: List[_Event], pos: int, match: Callable[[Obj], bool]) -> Tuple[int, List[Obj]]:
    """What a watch at ``pos`` whose selector is ``match`` is sent of ``events``
    (those after ``pos``): ADDED, MODIFIED or DELETED as the object enters, stays
    in or leaves the selector; and the watch's new position."""
    send: List[Obj] = []
    for e in events:
        pos = e.rv
        now_in, was_in = match(e.obj), e.old is not None and match(e.old)
        if e.type == "DELETED":
            if was_in:
                send.append({"type": "DELETED", "object": e.obj})
        elif now_in:
            kind = "MODIFIED" if was_in else "ADDED"
            send.append({"type": kind, "object": e.obj})
        elif was_in:  # it left the selector
            send.append({"type": "DELETED", "object": e.obj})
    return pos, send


def _bookmark(resource: Resource, rv: int) -> Obj:
    """A BOOKMARK event at ``rv``."""
    meta = {"resourceVersion": str(rv)}
    return {"type": "BOOKMARK", "object": {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": meta}}


class _ObjectStore:
    """The objects, history, list snapshots, watch counters and faults of a
    :class:`~socklb.kubernetes.testing.FakeApiServer`, under one condition
    variable (``_cond``) that watches wait on."""

    def __init__(self, resources: Tuple[Resource, ...]) -> None:
        self._stores = {(r.group, r.version, r.plural): _Store(r) for r in resources}
        self._by_kind = {r.kind: s for s, r in ((s, s.resource) for s in self._stores.values())}
        self._rv = 0
        self._compacted = 0
        self._cond = threading.Condition()
        self._closing = False
        self._generation = 0  # close_watches() bumps it: open streams end
        self._stall_generation = 0  # stall_watches() bumps it: open streams go silent
        self._bookmarks = 0  # send_bookmark() bumps it
        self._errors = 0  # error_watches() bumps it
        self._error_event: Obj = {}
        self._snapshots: Dict[str, Tuple[int, List[Obj]]] = {}
        self._faults: List[Fault] = []
        self.requests: List[Request] = []
        self.watches_open = 0

    # -- objects -----------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion handed out."""
        with self._cond:
            return self._rv

    def apply(self, obj: Obj) -> Obj:
        """Create or replace an object (its ``kind`` says which collection); returns the stored copy."""
        store = self._store_for(obj)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError("the object has no metadata.name")
        if store.resource.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        obj.setdefault("apiVersion", store.resource.api_version)
        key = (meta.get("namespace", ""), meta["name"])
        with self._cond:
            old = store.objects.get(key)
            meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            store.objects[key] = obj
            store.texts[key] = (obj, _item_text(obj))
            store.history.append(_Event(self._rv, "MODIFIED" if old else "ADDED", obj, old))
            self._cond.notify_all()
        return copy.deepcopy(obj)

    def delete(self, kind: str, namespace: Optional[str], name: str) -> bool:
        """Delete an object; False if there was none."""
        store = self._by_kind[kind]
        key = (namespace or "default" if store.resource.namespaced else "", name)
        with self._cond:
            old = store.objects.pop(key, None)
            store.texts.pop(key, None)
            if old is None:
                return False
            self._rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            store.history.append(_Event(self._rv, "DELETED", gone, old))
            self._cond.notify_all()
        return True

    def get(self, kind: str, namespace: Optional[str], name: str) -> Optional[Obj]:
        store = self._by_kind[kind]
        key = (namespace or "default" if store.resource.namespaced else "", name)
        with self._cond:
            obj = store.objects.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def _store_for(self, obj: Obj) -> _Store:
        kind = obj.get("kind")
        if kind not in self._by_kind:
            raise ValueError(f"kind {kind!r} is not served (serving {sorted(self._by_kind)})")
        return self._by_kind[kind]

    # -- faults ------------------------------------------------------------

    def compact(self) -> int:
        """Forget the history up to now: a watch from an older resourceVersion gets 410 Gone."""
        with self._cond:
            self._compacted = self._rv
            for s in self._stores.values():
                s.history.clear()
            return self._rv

    def expire_continue_tokens(self) -> None:
        """Make every continue token handed out so far answer 410 Expired."""
        with self._cond:
            self._snapshots.clear()

    def close_watches(self) -> None:
        """End the open watch streams cleanly (as at an API server restart)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def stall_watches(self) -> None:
        """Leave the open watch streams open but silent, forever: nothing more is
        sent on them, not even their end.  New requests are served normally."""
        with self._cond:
            self._stall_generation += 1
            self._cond.notify_all()

    def error_watches(self, code: int = 500, reason: str = "InternalError", message: str = "injected") -> None:
        """End the open watch streams with an ERROR event carrying a Status of ``code``
        (410 makes a well-behaved client list again; others make it watch again)."""
        with self._cond:
            self._errors += 1
            self._error_event = {"type": "ERROR", "object": _status(code, reason, message)}
            self._cond.notify_all()

    def send_bookmark(self) -> None:
        """Send a BOOKMARK now on every watch that allows bookmarks."""
        with self._cond:
            self._bookmarks += 1
            self._cond.notify_all()

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: Optional[float] = None,
        match: str = "",
        watch: Optional[bool] = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (and a ``Retry-After`` header)."""
        with self._cond:
            self._faults.append(Fault(status, times, retry_after, match, watch))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` until true or ``timeout``: a helper for tests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    def watch_requests(self, match: str = "") -> List[Request]:
        with self._cond:
            return [r for r in self.requests if r.watch and match in r.path]

    # -- what requests are answered with ------------------------------------

    def _take_fault(self, path: str, watch: bool) -> Optional[Fault]:
        with self._cond:
            for f in self._faults:
                if f.times > 0 and f.match in path and (f.watch is None or f.watch == watch):
                    f.times -= 1
                    if f.times == 0:
                        self._faults.remove(f)
                    return f
        return None

    def _list(self, store: _Store, ns: Optional[str], q: Dict[str, str]) -> Obj:
        match = matcher(ns, q)
        limit = int(q.get("limit") or 0)
        token = q.get("continue")
        with self._cond:
            if token:
                try:
                    snap_id, offset = json.loads(base64.urlsafe_b64decode(token.encode()))
                    rv, items = self._snapshots[snap_id]
                except (ValueError, KeyError, TypeError):
                    raise _Gone from None
            else:
                rv = self._rv
                # Stored objects are never changed in place (apply stores a new copy), so a
                # list of references is a consistent snapshot; nothing is copied.
                items = [o for _, o in sorted(store.objects.items()) if match(o)]
                snap_id, offset = uuid.uuid4().hex, 0
            page = items[offset : offset + limit] if limit > 0 else items[offset:]
            end = offset + len(page)
            meta: Obj = {"resourceVersion": str(rv)}
            if end < len(items):
                self._snapshots[snap_id] = (rv, items)
                meta["continue"] = base64.urlsafe_b64encode(json.dumps([snap_id, end]).encode()).decode()
                meta["remainingItemCount"] = len(items) - end
            else:
                self._snapshots.pop(snap_id, None)
        # The stored objects: list_text() sends them without kind or apiVersion, as the real server does.
        return {
            "kind": f"{store.resource.kind}List",
            "apiVersion": store.resource.api_version,
            "metadata": meta,
            "items": page,
        }
