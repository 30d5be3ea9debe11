"""A reflector over the official ``kubernetes`` client: a local copy of one kind of object, kept current.

The official client has no informer and its ``watch.Watch().stream`` never
re-lists, so this does what client-go's reflector does:

- a paginated LIST (``limit``/``continue``; an expired continue token restarts
  the list), then a WATCH from the list's ``resourceVersion`` with
  ``allowWatchBookmarks=true`` (a BOOKMARK only moves the resourceVersion on);
- a new WATCH from the last resourceVersion seen when a stream ends, and a new
  LIST when the API says 410 Gone (in the stream or as the answer), diffed
  against the copy so that the handler sees only what changed;
- a client read timeout longer than the server's ``timeoutSeconds``: a stream
  that stalls silently (a dead network path) is noticed and replaced;
- capped exponential backoff with jitter after failures, and the server's
  ``Retry-After`` on 429 (and 5xx) answers;
- an optional periodic full re-list (``resync_period``).

Objects are kept and handed over as dicts in the API's JSON form (what
:func:`socklb.kubernetes.translate` reads), read with ``_preload_content=False``
so no model objects are built.  Any ``list_*`` function of the client works:

>>> from kubernetes import client                                    # doctest: +SKIP
>>> api = client.CoreV1Api(client.ApiClient())                       # doctest: +SKIP
>>> r = Reflector(api.list_service_for_all_namespaces, print, name="services")  # doctest: +SKIP
>>> r.start(); r.synced.wait(30)                                    # doctest: +SKIP

``tests/test_kubernetes_reflector.py`` runs it against
:class:`socklb.kubernetes.testing.FakeApiServer`.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

__all__ = ["Event", "Reflector", "ReflectorStats", "backoff_delay", "retry_after"]

logger = logging.getLogger("socklb.kubernetes")

Obj = Dict[str, Any]
Key = Tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Event:
    """A change to the copy: ``type`` is ADDED, MODIFIED or DELETED (``obj`` the
    new object, or the last one known for DELETED; ``old`` the previous one), or
    SYNCED after each complete (re)list (``key`` and ``obj`` None)."""

    type: str
    key: Optional[Key] = None
    obj: Optional[Obj] = None
    old: Optional[Obj] = None


@dataclass
class ReflectorStats:
    """Counters of what the reflector did."""

    lists: int = 0
    list_pages: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    gone: int = 0  # 410s that forced a re-list
    errors: int = 0
    throttled: int = 0  # 429s
    last_error: str = ""
    waits: list[float] = field(default_factory=list)  # every pause taken, in seconds


def backoff_delay(failures: int, initial: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """The pause after ``failures`` consecutive failures (1, 2, ...): exponential,
    capped, with jitter in [half, all] of the step so clients spread out.

    >>> [round(backoff_delay(n, 1.0, 8.0, rand=lambda: 1.0), 1) for n in (1, 2, 3, 4, 5, 6)]
    [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    >>> backoff_delay(3, 1.0, 8.0, rand=lambda: 0.0)
    2.0
    """
    step = min(cap, initial * (2.0 ** max(0, failures - 1)))
    return step * (0.5 + 0.5 * rand())


def retry_after(exc: Any, limit: float) -> Optional[float]:
    """The ``Retry-After`` seconds of an ApiException (at most ``limit``), or None."""
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.0), limit) if seconds == seconds else None


class _Gone(Exception):
    """The API said 410: the resourceVersion or continue token is too old."""


class _StreamError(Exception):
    """An ERROR event other than 410 in a watch stream."""


class Reflector:
    """LIST then WATCH one collection forever, keeping ``store`` current and
    calling ``handler`` with each :class:`Event` (from the reflector's thread;
    an exception from the handler is logged, never stops the reflector).

    ``list_func`` is a ``list_*`` function of the official client (bound to an
    ApiClient), ``list_kwargs`` extra arguments such as ``label_selector``.
    ``watch_timeout`` is the server-side ``timeoutSeconds`` base (each watch asks
    for a random value in [t, 2t), as client-go does), and the client's read
    timeout is that plus ``read_timeout_margin``.  ``resync_period`` (seconds,
    None for never) re-lists everything; it is checked when a watch ends, so at
    most every ``watch_timeout`` to ``2 * watch_timeout`` seconds.
    ``transform`` (like client-go's ``SetTransform``) is applied to every object
    as it arrives, before it is stored or handed over: a way to keep only what
    the handler needs.  The store is keyed by the name and namespace the object
    came with; what it returns must keep ``metadata.resourceVersion`` or have an
    ``rv`` attribute (a str) that holds it.  If it raises, the object is kept as it came.
    """

    def __init__(
        self,
        list_func: Callable[..., Any],
        handler: Optional[Callable[[Event], None]] = None,
        *,
        name: str = "",
        list_kwargs: Optional[Dict[str, Any]] = None,
        page_size: int = 500,
        watch_timeout: float = 300.0,
        read_timeout_margin: float = 30.0,
        connect_timeout: float = 10.0,
        backoff_initial: float = 0.8,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        resync_period: Optional[float] = None,
        rand: Callable[[], float] = random.random,
        transform: Optional[Callable[[Obj], Any]] = None,
    ) -> None:
        if watch_timeout < 1:
            raise ValueError("watch_timeout must be at least 1 second")
        if read_timeout_margin <= 0:
            raise ValueError("read_timeout_margin must be positive: the read timeout must exceed timeoutSeconds")
        self._list_func = list_func
        self._handler = handler
        self.name = name or getattr(list_func, "__name__", "reflector")
        self._kwargs = dict(list_kwargs or {})
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.read_timeout_margin = read_timeout_margin
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.resync_period = resync_period
        self._rand = rand
        self._transform = transform
        self.store: Dict[Key, Obj] = {}
        self.resource_version = ""
        self.synced = threading.Event()
        self.listing = False
        """True while a LIST is being read (before its events are handed over)."""
        self.stats = ReflectorStats()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._resp: Any = None
        self._lock = threading.Lock()

    def snapshot(self) -> Dict[Key, Obj]:
        """A copy of the store's index, safe to iterate from any thread (the objects are shared: do not change them)."""
        with self._lock:
            return dict(self.store)

    # -- running -----------------------------------------------------------

    def start(self) -> None:
        """Run in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("the reflector was started already")
        self._thread = threading.Thread(target=self.run, name=f"reflector-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop, interrupting an open watch; waits for the thread."""
        self._stop.set()
        with self._lock:
            resp = self._resp
        if resp is not None:
            _interrupt(resp)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """LIST and WATCH until :meth:`stop`."""
        need_list = True
        failures = 0
        last_list = 0.0
        while not self._stop.is_set():
            delay: Optional[float] = None
            try:
                if need_list or (self.resync_period is not None and time.monotonic() - last_list >= self.resync_period):
                    self._relist()
                    need_list, failures, last_list = False, 0, time.monotonic()
                    continue
                if self._watch():
                    failures = 0
                else:  # ended at once without a word: treat as a failure
                    failures += 1
                    delay = backoff_delay(failures, self.backoff_initial, self.backoff_max, self._rand)
            except _Gone:
                self.stats.gone += 1
                logger.info("%s: resourceVersion %s is gone (410): listing again", self.name, self.resource_version)
                need_list = True
            except Exception as e:  # network, HTTP, decoding: all retried
                if self._stop.is_set():
                    break
                failures += 1
                self.stats.errors += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"
                status = getattr(e, "status", None)
                delay = backoff_delay(failures, self.backoff_initial, self.backoff_max, self._rand)
                if status == 410:
                    self.stats.gone += 1
                    need_list, delay = True, None
                    logger.info("%s: 410 Gone: listing again", self.name)
                else:
                    if status == 429:
                        self.stats.throttled += 1
                    if isinstance(status, int) and (status == 429 or status >= 500):
                        told = retry_after(e, self.max_retry_after)
                        if told is not None:
                            delay = told
                    logger.warning(
                        "%s: %s failed (%s); retrying in %.1f s",
                        self.name,
                        "list" if need_list else "watch",
                        self.stats.last_error.splitlines()[0][:200],
                        delay,
                    )
            if delay is not None and not self._stop.is_set():
                self.stats.waits.append(delay)
                self._stop.wait(delay)

    # -- LIST --------------------------------------------------------------

    def _call(self, **kwargs: Any) -> Any:
        return self._list_func(**self._kwargs, **kwargs, _preload_content=False)

    def _relist(self) -> None:
        self.listing = True
        try:
            try:
                items, rv = self._list_all()
            except _Gone:
                # The continue token expired mid-list: start over without paging.
                logger.info("%s: continue token expired: listing again in one request", self.name)
                items, rv = self._list_all(paged=False)
        finally:
            self.listing = False
        self.stats.lists += 1
        old, new = self.store, dict(items)
        with self._lock:
            self.store, self.resource_version = new, rv
        for key, obj in new.items():
            before = old.get(key)
            if before is None:
                self._emit(Event("ADDED", key, obj))
            elif _rv(before) != _rv(obj):
                self._emit(Event("MODIFIED", key, obj, before))
        for key, obj in old.items():
            if key not in new:
                self._emit(Event("DELETED", key, obj, obj))
        self._emit(Event("SYNCED"))
        self.synced.set()

    def _list_all(self, paged: bool = True) -> Tuple[list[Tuple[Key, Obj]], str]:
        items: list[Tuple[Key, Obj]] = []
        held = self.store  # on a re-list: an object whose resourceVersion is unchanged is kept as it is held
        token: Optional[str] = None
        timeout = (self.connect_timeout, self.watch_timeout + self.read_timeout_margin)
        while True:
            kwargs: Dict[str, Any] = {"_request_timeout": timeout}
            if paged and self.page_size:
                kwargs["limit"] = self.page_size
            if token:
                kwargs["_continue"] = token
            try:
                resp = self._call(**kwargs)
            except Exception as e:
                if getattr(e, "status", None) == 410 and token:
                    raise _Gone from None
                raise
            try:
                body = json.loads(resp.data)
            finally:
                _release(resp)
            self.stats.list_pages += 1
            page = body.get("items") or []
            for o in page:
                key = _key(o) if isinstance(o, dict) else None
                if key is not None:  # the key of the object as it came: a transform may drop the name
                    before = held.get(key)
                    if before is not None and _rv(before) == _rv(o) != "":
                        # Unchanged: no second copy (a re-list would otherwise hold two of everything).
                        items.append((key, before))
                    else:
                        items.append((key, self._slim(o)))
            meta = body.get("metadata") or {}
            del body, page  # only the transformed objects stay
            token = meta.get("continue") or None
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    # -- WATCH -------------------------------------------------------------

    def _watch(self) -> bool:
        """One watch stream; True if it was useful (events, bookmarks or a normal timeout)."""
        seconds = int(self.watch_timeout * (1.0 + self._rand()))
        started = time.monotonic()
        resp = self._call(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=seconds,
            _request_timeout=(self.connect_timeout, seconds + self.read_timeout_margin),
        )
        self.stats.watches += 1
        with self._lock:
            self._resp = resp
        got = 0
        try:
            if self._stop.is_set():
                return True
            for line in _lines(resp):
                if self._stop.is_set():
                    return True
                if not line.strip():
                    continue
                got += 1
                self._on_line(line)
        finally:
            with self._lock:
                self._resp = None
            _release(resp)
        return got > 0 or time.monotonic() - started >= 1.0

    def _on_line(self, line: str) -> None:
        ev = json.loads(line)
        kind = ev.get("type")
        obj = ev.get("object")
        if not isinstance(obj, dict):
            logger.warning("%s: watch event without an object: %.200s", self.name, line)
            return
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise _StreamError(f"watch ERROR {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        rv = _rv(obj)
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
            if rv:
                self.resource_version = rv
            return
        key = _key(obj)
        if key is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            logger.warning("%s: ignoring watch event %s without a name: %.200s", self.name, kind, line)
            return
        self.stats.events += 1
        obj = self._slim(obj)
        with self._lock:
            old = self.store.get(key)
            if kind == "DELETED":
                self.store.pop(key, None)
            else:
                self.store[key] = obj
                if old is None:
                    kind = "ADDED"
                elif kind == "ADDED":
                    kind = "MODIFIED"
            if rv:
                self.resource_version = rv
        self._emit(Event(kind, key, obj, old))

    def _slim(self, obj: Obj) -> Obj:
        if self._transform is None:
            return obj
        try:
            slim: Obj = self._transform(obj)  # or the transform's own object, read like one
            return slim
        except Exception:
            logger.exception("%s: the transform failed on %.200s: keeping the object as it is", self.name, obj)
            return obj

    def _emit(self, event: Event) -> None:
        if self._handler is None:
            return
        try:
            self._handler(event)
        except Exception:
            logger.exception("%s: the event handler failed on %s %s", self.name, event.type, event.key)


def _key(obj: Obj) -> Optional[Key]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        return None
    ns = meta.get("namespace")
    return (sys.intern(ns) if isinstance(ns, str) else "", meta["name"])  # a few namespaces, many objects


def _rv(obj: Obj) -> str:
    rv = getattr(obj, "rv", None)  # a transform's own object (the agent's Compact)
    if isinstance(rv, str):
        return rv
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""


def _lines(resp: Any) -> Iterator[str]:
    """The lines of a streamed response, as they arrive (one watch event each)."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        if isinstance(chunk, str):
            chunk = chunk.encode()
        buf += chunk
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1 :]
            yield line.decode("utf-8", "replace")
    if buf.strip():
        yield buf.decode("utf-8", "replace")


def _interrupt(resp: Any) -> None:
    for name in ("shutdown", "close"):
        fn = getattr(resp, name, None)
        if fn is not None:
            try:
                fn()
            except Exception:
                pass


def _release(resp: Any) -> None:
    try:
        resp.close()
    finally:
        release = getattr(resp, "release_conn", None)
        if release is not None:
            release()
