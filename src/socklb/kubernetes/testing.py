"""A Kubernetes API server test double that speaks the real list/watch protocol over HTTP.

No real kube-apiserver can be installed from Debian, PyPI or npm, so socklb's
agent - and your own controllers - are tested against this: an
``http.server`` on 127.0.0.1 that serves Services, EndpointSlices and Nodes the
way the API server does, to the official ``kubernetes`` client (or any other):

- ``GET`` of a collection (cluster-wide or in a namespace) with ``limit`` and
  ``continue`` (a consistent snapshot across pages, ``remainingItemCount``),
  ``labelSelector`` (``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``) and
  ``fieldSelector`` (``metadata.name``, ``metadata.namespace``);
- ``GET`` of one object (``/api/v1/nodes/node-a``);
- ``?watch=true`` from a ``resourceVersion``: a chunked stream of JSON events,
  one per line (ADDED, MODIFIED, DELETED; an object leaving a label selector is
  DELETED), ``BOOKMARK`` events when ``allowWatchBookmarks=true``, the stream
  ended after ``timeoutSeconds``, and an ``ERROR`` event with a 410 Status when
  the version asked for was compacted away;
- faults on demand: :meth:`FakeApiServer.close_watches` ends the open streams,
  :meth:`~FakeApiServer.error_watches` ends them with an ERROR event,
  :meth:`~FakeApiServer.stall_watches` leaves them open and silent forever (a
  network path that died), :meth:`~FakeApiServer.compact` expires old versions,
  :meth:`~FakeApiServer.expire_continue_tokens` makes a paginated list 410, and
  :meth:`~FakeApiServer.fail_next` answers the next requests with an error such
  as 429 with ``Retry-After``.

Objects are changed with :meth:`~FakeApiServer.apply` and
:meth:`~FakeApiServer.delete`; every change takes the next resourceVersion, as
in etcd.  Only loopback is used.

>>> import json, urllib.request
>>> with FakeApiServer() as api:
...     _ = api.apply({"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
...                    "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}})
...     with urllib.request.urlopen(api.url + "/api/v1/services?limit=10") as r:
...         page = json.load(r)
>>> page["kind"], [s["metadata"]["name"] for s in page["items"]], page["metadata"]["resourceVersion"]
('ServiceList', ['web'], '1')

With the official client: ``kubernetes.client.CoreV1Api(api.api_client())``.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeApiServer", "Fault", "Request", "Resource"]

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


@dataclass
class _Store:
    resource: Resource
    objects: Dict[Key, Obj] = field(default_factory=dict)
    # Each stored object's JSON as a list item (no kind or apiVersion), made when it
    # is stored: a LIST of 50,000 objects joins texts instead of encoding them again.
    texts: Dict[Key, Tuple[Obj, str]] = field(default_factory=dict)
    history: List[_Event] = field(default_factory=list)


def _item_text(obj: Obj) -> str:
    """An object's JSON as an item of a list (which carries no kind or apiVersion)."""
    return json.dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})


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


_REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 410: "Expired", 429: "TooManyRequests"}


def _selector(text: str) -> Callable[[Obj], bool]:
    """A label selector of equality terms: k, !k, k=v, k==v, k!=v."""
    terms: List[Callable[[Dict[str, Any]], bool]] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(!?)([A-Za-z0-9./_-]+)(?:\s*(==|=|!=)\s*([A-Za-z0-9._-]*))?", raw)
        if m is None:
            raise ValueError(f"unsupported label selector term {raw!r}")
        neg, key, op, value = m.groups()
        if op is None:
            terms.append(
                (lambda k: lambda labels: k not in labels)(key) if neg else (lambda k: lambda labels: k in labels)(key)
            )
        elif neg:
            raise ValueError(f"unsupported label selector term {raw!r}")
        elif op == "!=":
            terms.append((lambda k, v: lambda labels: labels.get(k) != v)(key, value))
        else:
            terms.append((lambda k, v: lambda labels: labels.get(k) == v)(key, value))

    def match(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(t(labels) for t in terms)

    return match


def _field_selector(text: str) -> Callable[[Obj], bool]:
    terms: List[Tuple[str, bool, str]] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(metadata\.name|metadata\.namespace)\s*(==|=|!=)\s*(.*)", raw)
        if m is None:
            raise ValueError(f"unsupported field selector term {raw!r}")
        terms.append((m.group(1).split(".")[1], m.group(2) != "!=", m.group(3)))

    def match(obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        return all((meta.get(f, "") == v) == eq for f, eq, v in terms)

    return match


class _Gone(Exception):
    pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that went away (or idled out) is no error of the server's
        super().handle_error(request, client_address)


class FakeApiServer:
    """The API server test double; a context manager that serves on 127.0.0.1 until closed.

    ``bookmark_interval``: seconds between BOOKMARK events on watches that ask
    for them (None: only when :meth:`send_bookmark` is called).
    ``max_watch_seconds``: the longest a watch stream lasts when the client
    gives no ``timeoutSeconds`` (the real server picks 30-60 minutes).
    """

    def __init__(
        self,
        resources: Tuple[Resource, ...] = DEFAULT_RESOURCES,
        *,
        bookmark_interval: Optional[float] = None,
        max_watch_seconds: float = 1800.0,
    ) -> None:
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
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
        self._sockets: List[socket.socket] = []
        self.requests: List[Request] = []
        self.watches_open = 0
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-apiserver", daemon=True)
        self._thread.start()

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def close(self) -> None:
        """Stop serving and drop every connection."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._cond:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(5)

    def __enter__(self) -> FakeApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def configuration(self) -> Any:
        """A ``kubernetes.client.Configuration`` for this server."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return cfg

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` talking to this server."""
        from kubernetes import client

        return client.ApiClient(self.configuration())

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

    # -- serving -----------------------------------------------------------

    def _take_fault(self, path: str, watch: bool) -> Optional[Fault]:
        with self._cond:
            for f in self._faults:
                if f.times > 0 and f.match in path and (f.watch is None or f.watch == watch):
                    f.times -= 1
                    if f.times == 0:
                        self._faults.remove(f)
                    return f
        return None

    def _route(self, path: str) -> Tuple[_Store, Optional[str], Optional[str]]:
        """(store, namespace or None for all, name or None for the collection)."""
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise LookupError(path)
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 2:
            raise LookupError(path)
        store = self._stores.get((group, version, rest[0]))
        if store is None or (ns is not None and not store.resource.namespaced):
            raise LookupError(path)
        return store, ns, rest[1] if len(rest) == 2 else None

    def _list(self, store: _Store, ns: Optional[str], q: Dict[str, str]) -> Obj:
        match = self._matcher(ns, q)
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
        # The stored objects: _send_list sends them without kind or apiVersion, as the real server does.
        return {
            "kind": f"{store.resource.kind}List",
            "apiVersion": store.resource.api_version,
            "metadata": meta,
            "items": page,
        }

    def _matcher(self, ns: Optional[str], q: Dict[str, str]) -> Callable[[Obj], bool]:
        labels = _selector(q.get("labelSelector", ""))
        fields = _field_selector(q.get("fieldSelector", ""))
        return lambda o: (ns is None or o["metadata"].get("namespace") == ns) and labels(o) and fields(o)

    def _watch(self, handler: BaseHTTPRequestHandler, store: _Store, ns: Optional[str], q: Dict[str, str]) -> None:
        match = self._matcher(ns, q)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else self.max_watch_seconds
        rv_text = q.get("resourceVersion", "")
        initial: List[Obj] = []
        with self._cond:
            if rv_text in ("", "0"):
                pos = self._rv
                initial = [o for _, o in sorted(store.objects.items()) if match(o)]
            else:
                try:
                    pos = int(rv_text)
                except ValueError:
                    pos = -1
                if pos < 0:
                    self._error(handler, 400, f"invalid resourceVersion {rv_text!r}")
                    return
                if pos < self._compacted:
                    initial = []
                    pos = -1  # too old: 410 in the stream
            generation, stalls, marks, errors = self._generation, self._stall_generation, self._bookmarks, self._errors
            self.watches_open += 1
        handler.close_connection = True  # unless the stream ends cleanly
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            if pos == -1:
                status = _status(410, "Expired", f"too old resource version: {rv_text} ({self._compacted})")
                self._chunk(handler, {"type": "ERROR", "object": status})
                self._end(handler)
                return
            for o in initial:
                self._chunk(handler, {"type": "ADDED", "object": o})
            deadline = time.monotonic() + timeout
            next_mark = time.monotonic() + self.bookmark_interval if self.bookmark_interval else None
            while True:
                send: List[Obj] = []
                with self._cond:
                    while True:
                        if self._closing:
                            return
                        if self._stall_generation != stalls:
                            # Silent forever: wait for the server to close, then drop the connection.
                            handler.close_connection = True
                            while not self._closing:
                                self._cond.wait(0.5)
                            return
                        if self._errors != errors:
                            self._chunk(handler, self._error_event)
                            self._end(handler)
                            return
                        if self._generation != generation or time.monotonic() >= deadline:
                            break
                        new = [e for e in store.history if e.rv > pos]
                        now = time.monotonic()
                        mark = bookmarks and (self._bookmarks != marks or (next_mark is not None and now >= next_mark))
                        if new or mark:
                            break
                        wake = deadline - now
                        if next_mark is not None and bookmarks:
                            wake = min(wake, next_mark - now)
                        self._cond.wait(max(0.01, min(wake, 0.5)))
                    if self._generation != generation or time.monotonic() >= deadline:
                        self._end(handler)
                        return
                    for e in new:
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
                    if bookmarks and (
                        self._bookmarks != marks or (next_mark is not None and time.monotonic() >= next_mark)
                    ):
                        marks = self._bookmarks
                        if self.bookmark_interval:
                            next_mark = time.monotonic() + self.bookmark_interval
                        r = store.resource
                        meta = {"resourceVersion": str(max(pos, self._rv))}
                        send.append(
                            {
                                "type": "BOOKMARK",
                                "object": {"kind": r.kind, "apiVersion": r.api_version, "metadata": meta},
                            }
                        )
                        pos = max(pos, self._rv)
                for ev in send:
                    self._chunk(handler, ev)
        except OSError:
            return  # the client went away
        finally:
            with self._cond:
                self.watches_open -= 1

    @staticmethod
    def _chunk(handler: BaseHTTPRequestHandler, event: Obj) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()

    @staticmethod
    def _end(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
        handler.close_connection = False

    @staticmethod
    def _send_list(handler: BaseHTTPRequestHandler, store: _Store, body: Obj) -> None:
        """A ...List document, each item's text the one made when it was stored
        (the same bytes ``_send_json`` would send)."""
        texts: List[str] = []
        for o in body["items"]:
            meta = o["metadata"]
            hit = store.texts.get((meta.get("namespace", ""), meta["name"]))
            texts.append(hit[1] if hit is not None and hit[0] is o else _item_text(o))
        head = {k: v for k, v in body.items() if k != "items"}
        data = (json.dumps(head)[:-1] + ', "items": [' + ", ".join(texts) + "]}").encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _send_json(
        handler: BaseHTTPRequestHandler, code: int, body: Obj, headers: Optional[Dict[str, str]] = None
    ) -> None:
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _error(
        self, handler: BaseHTTPRequestHandler, code: int, message: str, headers: Optional[Dict[str, str]] = None
    ) -> None:
        self._send_json(handler, code, _status(code, _REASONS.get(code, "InternalError"), message), headers)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        req = Request(handler.command, url.path, q, time.monotonic())
        with self._cond:
            self.requests.append(req)
        fault = self._take_fault(url.path, req.watch)
        if fault is not None:
            # Retry-After is whole seconds (RFC 9110 delay-seconds), as the API server sends it.
            headers = {"Retry-After": str(math.ceil(fault.retry_after))} if fault.retry_after is not None else None
            self._error(handler, fault.status, fault.reason or f"injected fault {fault.status}", headers)
            return
        if handler.command != "GET":
            length = int(handler.headers.get("Content-Length") or 0)
            if length:
                handler.rfile.read(length)  # keep the connection usable
            self._error(handler, 405, f"{handler.command} is not served by this test double (GET only)")
            return
        try:
            store, ns, name = self._route(url.path)
        except LookupError:
            self._error(handler, 404, f"the server could not find the requested resource ({url.path})")
            return
        try:
            if name is not None:
                key = (ns or "", name) if store.resource.namespaced else ("", name)
                with self._cond:
                    obj = copy.deepcopy(store.objects.get(key))
                if obj is None:
                    self._error(handler, 404, f'{store.resource.plural} "{name}" not found')
                    return
                obj.setdefault("kind", store.resource.kind)
                self._send_json(handler, 200, obj)
            elif req.watch:
                self._watch(handler, store, ns, q)
            else:
                self._send_list(handler, store, self._list(store, ns, q))
        except _Gone:
            self._error(handler, 410, "The provided continue parameter is too old to display a consistent list result.")
        except ValueError as e:
            self._error(handler, 400, str(e))

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # idle keep-alive connections are dropped after this

            def setup(self) -> None:
                super().setup()
                # As Go's net package (and so the real API server) does: without it, Nagle's
                # algorithm and the client's delayed ACK hold back watch events by ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with server._cond:
                    server._sockets.append(self.connection)

            def finish(self) -> None:
                with server._cond:
                    if self.connection in server._sockets:
                        server._sockets.remove(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def do_GET(self) -> None:
                server._serve(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
