"""The fake API server's HTTP side: :class:`FakeApiServer` routes requests to
collections and objects, answers lists and single objects, streams watches
(chunked JSON events) and answers injected faults; its state is
:class:`~socklb.kubernetes.testing.store._ObjectStore`.  See
:mod:`socklb.kubernetes.testing`."""

from __future__ import annotations

import copy
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from socklb.kubernetes.testing.selectors import matcher
from socklb.kubernetes.testing.store import (
    DEFAULT_RESOURCES,
    Obj,
    Request,
    Resource,
    _bookmark,
    _fan_out,
    _Gone,
    _ObjectStore,
    _status,
    _Store,
    list_text,
)

__all__ = ["FakeApiServer"]

_REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 410: "Expired", 429: "TooManyRequests"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that went away (or idled out) is no error of the server's
        super().handle_error(request, client_address)


class FakeApiServer(_ObjectStore):
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
        super().__init__(resources)
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
        self._sockets: List[socket.socket] = []
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

    # -- serving ---------------------------------------------------------

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

    def _watch(self, handler: BaseHTTPRequestHandler, store: _Store, ns: Optional[str], q: Dict[str, str]) -> None:
        match = matcher(ns, q)
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
                    pos, send = _fan_out(new, pos, match)
                    if bookmarks and (
                        self._bookmarks != marks or (next_mark is not None and time.monotonic() >= next_mark)
                    ):
                        marks = self._bookmarks
                        if self.bookmark_interval:
                            next_mark = time.monotonic() + self.bookmark_interval
                        pos = max(pos, self._rv)
                        send.append(_bookmark(store.resource, pos))
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
    def _send_data(handler: BaseHTTPRequestHandler, code: int, data: bytes) -> None:
        handler.send_response(code)
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
                self._send_data(handler, 200, list_text(store, self._list(store, ns, q)))
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
