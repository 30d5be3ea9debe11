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
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

__all__ = ["Event", "Reflector", "ReflectorStats", "backoff_delay", "list_function", "list_items", "retry_after"]

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


# The query parameters a list_* function of the client takes, by their names in the URL.
_QUERY = {
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "_continue": "continue",
    "field_selector": "fieldSelector",
    "label_selector": "labelSelector",
    "limit": "limit",
    "resource_version": "resourceVersion",
    "resource_version_match": "resourceVersionMatch",
    "send_initial_events": "sendInitialEvents",
    "timeout_seconds": "timeoutSeconds",
    "watch": "watch",
}


def list_function(api_client: Any, path: str) -> Optional[Callable[..., Any]]:
    """A ``list_*`` function for the collection at ``path`` (``/api/v1/services``,
    ``/apis/discovery.k8s.io/v1/endpointslices``), made from the ApiClient alone;
    None when the client is of a generation this does not know (then use the
    generated API class's function).

    It sends what the generated function sends (the same query parameters,
    authentication and error handling: an ``ApiException`` with the status and
    headers) and always returns the raw response, as ``_preload_content=False``
    does, which is how the reflector reads.  The point is memory: the generated
    ``CoreV1Api`` (kubernetes 35 and later) imports some 250 pydantic models,
    about 20 MiB for a process that never builds one of them.
    """
    serialize = getattr(api_client, "param_serialize", None)
    call = getattr(api_client, "_call_with_legacy_options", None)
    if not callable(serialize) or not callable(call):
        return None

    def list_func(*, _request_timeout: Any = None, _preload_content: bool = False, **kwargs: Any) -> Any:
        query = []
        for k, v in kwargs.items():
            name = _QUERY.get(k)
            if name is None:
                raise TypeError(f"list {path}: unexpected argument {k!r}")
            if v is not None:
                query.append((name, v))
        request = serialize(
            method="GET",
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        return call(request, {}, None, False, _request_timeout, True)

    list_func.__name__ = "list " + path
    return list_func


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

    def keys(self) -> list[Key]:
        """The keys of the store, safe to iterate from any thread (a list: an eighth of a copy of the store)."""
        with self._lock:
            return list(self.store)

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
                changed, unseen, rv = self._list_all()
            except _Gone:
                # The continue token expired mid-list: start over without paging.
                logger.info("%s: continue token expired: listing again in one request", self.name)
                changed, unseen, rv = self._list_all(paged=False)
        finally:
            self.listing = False
        self.stats.lists += 1
        old = self.store
        # The new store starts as a copy of the old one: an unchanged object keeps its
        # key object too (assigning to an existing key keeps the key), so a re-list of
        # 50,000 unchanged objects leaves no new allocation behind, only what changed.
        new = dict(old)
        for key in unseen:
            del new[key]
        for key, obj in changed:
            new[key] = obj
        with self._lock:
            self.store, self.resource_version = new, rv
        for key, obj in changed:
            before = old.get(key)
            self._emit(Event("ADDED", key, obj) if before is None else Event("MODIFIED", key, obj, before))
        for key, obj in unseen.items():
            self._emit(Event("DELETED", key, obj, obj))
        self._emit(Event("SYNCED"))
        self.synced.set()

    def _list_all(self, paged: bool = True) -> Tuple[list[Tuple[Key, Obj]], Dict[Key, Obj], str]:
        """LIST everything: the objects that are new or changed (a resourceVersion
        other than the one held), the ones held that the list did not name, and
        the list's resourceVersion."""
        changed: list[Tuple[Key, Obj]] = []
        unseen = dict(self.store)  # what is held and not listed (yet): deleted meanwhile
        pop = unseen.pop
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
                raw = resp.data
            finally:
                _release(resp)
            del resp
            text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
            del raw
            self.stats.list_pages += 1
            top: Dict[str, Any] = {}
            # One item decoded at a time: a page of 500 objects as dicts is megabytes.
            for o in list_items(text, top):
                key = _key(o) if isinstance(o, dict) else None
                if key is not None:  # the key of the object as it came: a transform may drop the name
                    before = pop(key, None)
                    if before is None or _rv(before) != _rv(o) or not _rv(o):
                        # New or changed.  (Unchanged: nothing is kept of the listed copy;
                        # a re-list would otherwise hold two of everything.)
                        changed.append((key, self._slim(o)))
                del o
            del text
            meta = top.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            token = meta.get("continue") or None
            if not token:
                return changed, unseen, str(meta.get("resourceVersion", ""))

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


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def list_items(text: str, top: Dict[str, Any]) -> Iterator[Any]:
    """The ``items`` of a ``...List`` document (JSON text), decoded and given one at
    a time, so that a LIST page is never all decoded at once; the document's other
    members (``metadata``, ``kind``) are put in ``top`` (complete once the
    iterator is).  Malformed JSON raises ``ValueError`` (``json.JSONDecodeError``).

    >>> top = {}
    >>> list(list_items('{"kind": "List", "items": [{"a": 1}, [2]], "metadata": {"continue": "x"}}', top)), top
    ([{'a': 1}, [2]], {'kind': 'List', 'metadata': {'continue': 'x'}})
    >>> list(list_items('{"items": [1,]}', {}))
    Traceback (most recent call last):
    ...
    json.decoder.JSONDecodeError: Expecting value: line 1 column 14 (char 13)
    """
    match, decode = _WS.match, _DECODER.raw_decode

    def ws(text: str, i: int) -> re.Match[str]:
        m = match(text, i)
        assert m is not None  # the pattern matches the empty string
        return m

    def expect(i: int, what: str) -> int:
        if text[i : i + 1] != what:
            raise json.JSONDecodeError(f"Expecting {what!r}", text, i)
        return ws(text, i + 1).end()

    i = expect(ws(text, 0).end(), "{")
    if text[i : i + 1] == "}":
        i += 1
    else:
        while True:
            key, i = decode(text, i)
            if not isinstance(key, str):
                raise json.JSONDecodeError("Expecting a member name", text, i)
            i = expect(ws(text, i).end(), ":")
            if key == "items" and text[i : i + 1] == "[":
                i = ws(text, i + 1).end()
                if text[i : i + 1] == "]":
                    i += 1
                else:
                    while True:
                        item, i = decode(text, i)
                        yield item
                        del item
                        i = ws(text, i).end()
                        if text[i : i + 1] == "]":
                            i += 1
                            break
                        i = expect(i, ",")
            else:
                top[key], i = decode(text, i)
            i = ws(text, i).end()
            if text[i : i + 1] == "}":
                i += 1
                break
            i = expect(i, ",")
    if text[ws(text, i).end() :]:
        raise json.JSONDecodeError("Extra data", text, i)


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
