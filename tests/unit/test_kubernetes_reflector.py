"""The reflector and the API server test double, through the real ``kubernetes`` client on loopback."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from helpers import in_ci

from socklb.kubernetes.reflector import Event, Reflector, backoff_delay, list_function, list_items, retry_after
from socklb.kubernetes.testing import FakeApiServer

try:
    from kubernetes import client, watch

    HAVE_KUBERNETES = True
except ImportError:  # the dev extra installs it
    if not in_ci():
        pytest.skip(
            "the kubernetes package is not installed (pip install 'socklb[kubernetes]')", allow_module_level=True
        )
    HAVE_KUBERNETES = False  # CI=true: every test here fails (below), none is skipped


@pytest.fixture(autouse=True)
def _kubernetes_is_installed() -> None:
    if not HAVE_KUBERNETES:
        pytest.fail("the kubernetes package is missing: install socklb[dev] (CI=true forbids skipping)")


def service(name: str, ns: str = "default", ip: str = "10.96.0.1", **labels: str) -> Any:
    meta: Any = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {"kind": "Service", "metadata": meta, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}


def eslice(name: str, svc: str) -> Any:
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": [],
    }


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


def core(api: FakeApiServer, **config: Any) -> Any:
    cfg = api.configuration()
    for k, v in config.items():
        setattr(cfg, k, v)
    return client.CoreV1Api(client.ApiClient(cfg))


class Recorder:
    def __init__(self) -> None:
        self.events: List[Event] = []
        self.lock = threading.Lock()

    def __call__(self, e: Event) -> None:
        with self.lock:
            self.events.append(e)

    def kinds(self) -> List[Tuple[str, Any]]:
        with self.lock:
            return [(e.type, e.key[1] if e.key else None) for e in self.events]

    def clear(self) -> None:
        with self.lock:
            self.events.clear()


def reflector(api: FakeApiServer, rec: Recorder, list_func: Any = None, **kw: Any) -> Reflector:
    kw.setdefault("watch_timeout", 1)
    kw.setdefault("read_timeout_margin", 1)
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.4)
    r = Reflector(list_func or core(api).list_service_for_all_namespaces, rec, name="services", **kw)
    r.start()
    assert r.synced.wait(10), r.stats
    return r


def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_paginated_list_then_watch_from_its_resource_version(api: FakeApiServer) -> None:
    for i in range(7):
        api.apply(service(f"s{i}", ip=f"10.96.0.{i + 1}"))
    api.apply(eslice("other", "s0"))  # another resource: the global resourceVersion moves on
    rec = Recorder()
    r = reflector(api, rec, page_size=3)
    try:
        lists = [q for q in api.requests if not q.watch]
        assert [q.query.get("limit") for q in lists] == ["3", "3", "3"]
        assert "continue" not in lists[0].query and all(q.query.get("continue") for q in lists[1:])
        assert sorted(k for _, k in r.store) == [f"s{i}" for i in range(7)]
        assert r.resource_version == "8"
        until(lambda: len(api.watch_requests()) >= 1)
        w = api.watch_requests()[0]
        assert w.query["resourceVersion"] == "8"
        assert w.query["allowWatchBookmarks"] == "true"
        assert 1 <= int(w.query["timeoutSeconds"]) < 2
        assert rec.kinds() == [("ADDED", f"s{i}") for i in range(7)] + [("SYNCED", None)]
    finally:
        r.stop()


def test_the_read_timeout_exceeds_the_server_timeout_seconds(api: FakeApiServer) -> None:
    """Rule: a watch asks the server for timeoutSeconds and reads with a longer client timeout."""
    calls: List[Any] = []
    list_services = core(api).list_service_for_all_namespaces

    def recording(**kw: Any) -> Any:
        calls.append(kw)
        return list_services(**kw)

    rec = Recorder()
    r = reflector(api, rec, list_func=recording, watch_timeout=5, read_timeout_margin=2, connect_timeout=3)
    try:
        until(lambda: any(c.get("watch") for c in calls))
        w = next(c for c in calls if c.get("watch"))
        assert 5 <= w["timeout_seconds"] < 10
        assert w["_request_timeout"] == (3, w["timeout_seconds"] + 2)
        assert w["_preload_content"] is False and w["allow_watch_bookmarks"] is True
        assert all(c["_request_timeout"][1] > 0 for c in calls)
    finally:
        r.stop()


def test_list_kwargs_such_as_a_label_selector_are_passed_on(api: FakeApiServer) -> None:
    api.apply(service("mine"))
    api.apply(service("theirs", **{"service.kubernetes.io/service-proxy-name": "other"}))
    rec = Recorder()
    r = reflector(api, rec, list_kwargs={"label_selector": "!service.kubernetes.io/service-proxy-name"})
    try:
        assert list(r.snapshot()) == [("default", "mine")]
        until(lambda: api.watches_open == 1)
        api.apply(service("mine", **{"service.kubernetes.io/service-proxy-name": "other"}))  # leaves the selector
        until(lambda: not r.snapshot())
        assert rec.kinds()[-1] == ("DELETED", "mine")
    finally:
        r.stop()


def test_watch_events_update_the_store(api: FakeApiServer) -> None:
    api.apply(service("a"))
    rec = Recorder()
    r = reflector(api, rec)
    try:
        until(lambda: api.watches_open == 1)
        rec.clear()
        api.apply(service("b"))
        api.apply(service("a", ip="10.96.0.9"))
        api.delete("Service", "default", "b")
        until(lambda: len(rec.events) == 3)
        assert rec.kinds() == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
        assert list(r.store) == [("default", "a")]
        assert r.store[("default", "a")]["spec"]["clusterIP"] == "10.96.0.9"
        assert rec.events[1].old is not None and rec.events[1].old["spec"]["clusterIP"] == "10.96.0.1"
    finally:
        r.stop()


def test_a_bookmark_moves_the_resource_version_and_the_next_watch_starts_there(api: FakeApiServer) -> None:
    api.apply(service("a"))
    rec = Recorder()
    r = reflector(api, rec, watch_timeout=30)
    try:
        until(lambda: api.watches_open == 1)
        for i in range(3):
            api.apply(eslice(f"e{i}", "a"))  # not seen by the service watch
        api.send_bookmark()
        until(lambda: r.stats.bookmarks == 1)
        assert r.resource_version == "4"
        api.close_watches()
        until(lambda: len(api.watch_requests()) == 2)
        assert api.watch_requests()[1].query["resourceVersion"] == "4"
        assert r.stats.lists == 1 and rec.kinds() == [("ADDED", "a"), ("SYNCED", None)]
    finally:
        r.stop()


def test_server_closing_the_stream_rewatches_from_the_last_version_without_listing(api: FakeApiServer) -> None:
    rec = Recorder()
    r = reflector(api, rec, watch_timeout=30)
    try:
        until(lambda: api.watches_open == 1)
        api.apply(service("a"))
        until(lambda: ("default", "a") in r.store)
        api.close_watches()
        until(lambda: len(api.watch_requests()) == 2 and api.watches_open == 1)
        assert api.watch_requests()[1].query["resourceVersion"] == "1"
        api.apply(service("b"))
        until(lambda: ("default", "b") in r.store)
        assert r.stats.lists == 1
    finally:
        r.stop()


def test_a_stalled_stream_is_noticed_by_the_read_timeout(api: FakeApiServer) -> None:
    """Rule: the client read timeout exceeds the server's timeoutSeconds, so a silent stream is replaced."""
    rec = Recorder()
    r = reflector(api, rec, watch_timeout=1, read_timeout_margin=1)
    try:
        until(lambda: api.watches_open == 1)
        api.stall_watches()
        started = time.monotonic()
        api.apply(service("late"))
        until(lambda: ("default", "late") in r.store, timeout=10)
        took = time.monotonic() - started
        assert 0.9 <= took <= 5.0, took  # timeoutSeconds in [1, 2) + 1 s margin, plus a short backoff
        assert "ReadTimeoutError" in r.stats.last_error
        assert r.stats.lists == 1  # resumed from its resourceVersion, no re-list needed
    finally:
        r.stop()


def test_410_gone_in_the_stream_relists_and_reports_only_the_differences(api: FakeApiServer) -> None:
    for name in ("keep", "change", "remove"):
        api.apply(service(name))
    rec = Recorder()
    r = reflector(api, rec, watch_timeout=1, read_timeout_margin=1)
    try:
        until(lambda: api.watches_open == 1)
        api.stall_watches()  # the reflector misses what follows...
        api.apply(service("change", ip="10.96.0.7"))
        api.delete("Service", "default", "remove")
        api.apply(service("new"))
        api.compact()  # ...and the history it would resume from is gone
        rec.clear()
        until(lambda: r.stats.gone == 1 and r.stats.lists == 2)
        until(lambda: ("SYNCED", None) in rec.kinds())
        assert sorted(rec.kinds()[:-1]) == [("ADDED", "new"), ("DELETED", "remove"), ("MODIFIED", "change")]
        assert rec.kinds()[-1] == ("SYNCED", None)
        assert sorted(k for _, k in r.store) == ["change", "keep", "new"]
        assert r.resource_version == str(api.resource_version)
    finally:
        r.stop()


@pytest.mark.parametrize(
    ("code", "relists"), [(500, False), (410, True)], ids=["ERROR 500: watch again", "ERROR 410: list again"]
)
def test_an_error_event_in_the_stream(api: FakeApiServer, code: int, relists: bool) -> None:
    api.apply(service("a"))
    rec = Recorder()
    r = reflector(api, rec, watch_timeout=30)
    try:
        until(lambda: api.watches_open == 1)
        api.error_watches(code)
        until(lambda: len(api.watch_requests()) == 2 and api.watches_open == 1)
        assert r.stats.lists == (2 if relists else 1)
        assert r.stats.gone == (1 if relists else 0)
        if not relists:
            assert "watch ERROR 500" in r.stats.last_error
        api.apply(service("b"))
        until(lambda: ("default", "b") in r.snapshot())
        assert rec.kinds().count(("ADDED", "a")) == 1  # a re-list reports only changes
    finally:
        r.stop()


def test_an_expired_continue_token_restarts_the_list(api: FakeApiServer) -> None:
    for i in range(5):
        api.apply(service(f"s{i}"))
    list_services = core(api).list_service_for_all_namespaces
    pages = []

    def expiring(**kw: Any) -> Any:
        if not kw.get("watch"):
            pages.append((kw.get("limit"), bool(kw.get("_continue"))))
        resp = list_services(**kw)
        if len(pages) == 1 and not kw.get("watch"):
            api.apply(service("s9"))
            api.expire_continue_tokens()
        return resp

    rec = Recorder()
    r = reflector(api, rec, list_func=expiring, page_size=2)
    try:
        # the first page, its continuation (410 Expired), then one list without paging
        assert pages[:3] == [(2, False), (2, True), (None, False)]
        assert sorted(k for _, k in r.store) == ["s0", "s1", "s2", "s3", "s4", "s9"]
        assert r.resource_version == "6"
    finally:
        r.stop()


def test_429_retry_after_is_honoured_by_the_reflector(api: FakeApiServer) -> None:
    """With the client's own retries off, the reflector waits what Retry-After says."""
    rec = Recorder()
    r = reflector(api, rec, list_func=core(api, retries=False).list_service_for_all_namespaces, watch_timeout=30)
    try:
        until(lambda: api.watches_open == 1)
        api.fail_next(429, retry_after=1, watch=True)
        api.close_watches()
        until(lambda: len(api.watch_requests()) == 3 and api.watches_open == 1)
        w = api.watch_requests()
        # (a stream the server ends at once, with nothing on it, is itself backed off a little first)
        assert r.stats.throttled == 1 and r.stats.waits[-1] == 1.0
        gap = _request_times(api)
        assert gap[2] - gap[1] >= 0.95
        assert w[2].query["resourceVersion"] == w[0].query["resourceVersion"]
    finally:
        r.stop()


def test_429_retry_after_is_honoured_with_the_clients_default_retries(api: FakeApiServer) -> None:
    """The client's urllib3 retries honour Retry-After themselves; either way no request comes early."""
    rec = Recorder()
    api.fail_next(429, retry_after=1)
    started = time.monotonic()
    r = reflector(api, rec)
    try:
        assert time.monotonic() - started >= 0.95
        assert len([q for q in api.requests if not q.watch]) == 2
    finally:
        r.stop()


def test_failures_back_off_exponentially_with_a_cap(api: FakeApiServer) -> None:
    api.fail_next(500, times=5, watch=False)
    rec = Recorder()
    r = reflector(api, rec, backoff_initial=0.05, backoff_max=0.2, rand=lambda: 1.0)
    try:
        # the first watch draws timeoutSeconds with rand too: [1, 2) -> 2 with rand=1.0
        assert r.stats.waits == [0.05, 0.1, 0.2, 0.2, 0.2]
        assert r.stats.errors == 5 and r.stats.lists == 1
    finally:
        r.stop()


def test_backoff_and_retry_after_helpers() -> None:
    delays = [backoff_delay(n, 0.8, 30.0) for n in range(1, 12) for _ in range(20)]
    assert all(0.4 <= d <= 30.0 for d in delays)
    assert max(delays) > 15 and len({round(d, 6) for d in delays}) > 100  # capped, and jittered

    class E(Exception):
        def __init__(self, value: str) -> None:
            self.headers = {"Retry-After": value}

    assert retry_after(E("7"), 300.0) == 7.0
    assert retry_after(E("7"), 5.0) == 5.0
    assert retry_after(E("Wed, 21 Oct 2015 07:28:00 GMT"), 5.0) is None


def test_stop_interrupts_an_open_watch(api: FakeApiServer) -> None:
    rec = Recorder()
    r = reflector(api, rec, watch_timeout=600)
    until(lambda: api.watches_open == 1)
    started = time.monotonic()
    r.stop()
    assert time.monotonic() - started < 3
    assert r._thread is not None and not r._thread.is_alive()


def test_periodic_resync_relists(api: FakeApiServer) -> None:
    api.apply(service("a"))
    rec = Recorder()
    r = reflector(api, rec, watch_timeout=1, resync_period=0.5)
    try:
        until(lambda: r.stats.lists >= 2, timeout=10)
        assert rec.kinds().count(("SYNCED", None)) >= 2
        assert rec.kinds().count(("ADDED", "a")) == 1  # nothing changed: no events
    finally:
        r.stop()


def test_a_failing_handler_does_not_stop_the_reflector(api: FakeApiServer) -> None:
    seen: List[str] = []

    def handler(e: Event) -> None:
        seen.append(e.type)
        raise RuntimeError("boom")

    r = Reflector(core(api).list_service_for_all_namespaces, handler, watch_timeout=1, read_timeout_margin=1)
    r.start()
    try:
        assert r.synced.wait(10)
        until(lambda: api.watches_open == 1)
        api.apply(service("a"))
        until(lambda: ("default", "a") in r.store)
        until(lambda: "ADDED" in seen)
    finally:
        r.stop()


def _request_times(api: FakeApiServer) -> List[float]:
    return [q.at for q in api.watch_requests()]


# ---------------------------------------------------------------------------
# The test double itself, through the official client
# ---------------------------------------------------------------------------


def test_double_lists_with_selectors_and_gets_one_object(api: FakeApiServer) -> None:
    api.apply(service("a", app="x"))
    api.apply(service("b", "kube-system", app="y"))
    api.apply(service("c", **{"service.kubernetes.io/service-proxy-name": "other"}))
    api.apply({"kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}}})
    v1 = core(api)

    def names(lst: Any) -> List[str]:
        return sorted(i.metadata.name for i in lst.items)

    assert names(v1.list_service_for_all_namespaces()) == ["a", "b", "c"]
    assert names(v1.list_namespaced_service("kube-system")) == ["b"]
    assert names(v1.list_service_for_all_namespaces(label_selector="app=x")) == ["a"]
    assert names(v1.list_service_for_all_namespaces(label_selector="!service.kubernetes.io/service-proxy-name")) == [
        "a",
        "b",
    ]
    assert names(v1.list_service_for_all_namespaces(field_selector="metadata.name=b")) == ["b"]
    node = v1.read_node("node-a")
    assert node.metadata.labels == {"topology.kubernetes.io/zone": "z1"} and node.metadata.resource_version == "4"
    with pytest.raises(client.ApiException) as e:
        v1.read_node("nope")
    assert e.value.status == 404
    slices = client.DiscoveryV1Api(api.api_client()).list_endpoint_slice_for_all_namespaces()
    assert slices.items == []


def test_double_paginates_a_consistent_snapshot(api: FakeApiServer) -> None:
    for i in range(5):
        api.apply(service(f"s{i}"))
    v1 = core(api)
    first = v1.list_service_for_all_namespaces(limit=2)
    assert [i.metadata.name for i in first.items] == ["s0", "s1"] and first.metadata.remaining_item_count == 3
    api.apply(service("s5"))  # after the snapshot: not in its pages
    api.delete("Service", "default", "s4")
    second = v1.list_service_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    third = v1.list_service_for_all_namespaces(limit=2, _continue=second.metadata._continue)
    assert [i.metadata.name for i in second.items + third.items] == ["s2", "s3", "s4"]
    assert third.metadata._continue is None and third.metadata.resource_version == "5"
    api.expire_continue_tokens()
    with pytest.raises(client.ApiException) as e:
        v1.list_service_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert e.value.status == 410


def test_double_serves_the_official_watch(api: FakeApiServer) -> None:
    """The client's own watch.Watch: initial ADDED from version 0, then live events, a selector exit as DELETED."""
    api.apply(service("a", app="x"))
    v1 = core(api)
    w = watch.Watch()  # type: ignore[no-untyped-call]  # kubernetes.watch has no annotations
    got: List[Tuple[str, str]] = []

    def later() -> None:
        time.sleep(0.3)
        api.apply(service("b", app="x"))
        api.apply(service("a", app="moved"))  # leaves the selector

    threading.Thread(target=later).start()
    for ev in w.stream(  # type: ignore[no-untyped-call]  # kubernetes.watch has no annotations
        v1.list_service_for_all_namespaces, label_selector="app=x", timeout_seconds=2
    ):
        got.append((ev["type"], ev["object"].metadata.name))
        if len(got) == 3:
            w.stop()  # type: ignore[no-untyped-call]  # kubernetes.watch has no annotations
    assert got == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_double_answers_a_compacted_version_with_410(api: FakeApiServer) -> None:
    api.apply(service("a"))
    api.apply(service("b"))
    api.compact()
    resp = core(api).list_service_for_all_namespaces(
        watch=True, resource_version="1", timeout_seconds=2, _preload_content=False
    )
    body = resp.data.decode()
    assert '"type":"ERROR"' in body and '"code":410' in body


def test_double_bookmarks_on_an_interval() -> None:
    with FakeApiServer(bookmark_interval=0.2) as api:
        api.apply(service("a"))
        resp = core(api).list_service_for_all_namespaces(
            watch=True, resource_version="1", allow_watch_bookmarks=True, timeout_seconds=1, _preload_content=False
        )
        lines = resp.data.decode().splitlines()
        assert len(lines) >= 3 and all('"type":"BOOKMARK"' in line for line in lines)
        assert '"resourceVersion":"1"' in lines[0]


def test_double_injects_429_with_retry_after(api: FakeApiServer) -> None:
    api.fail_next(429, retry_after=3)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(api.url + "/api/v1/services")
    assert e.value.code == 429 and e.value.headers["Retry-After"] == "3"
    with urllib.request.urlopen(api.url + "/api/v1/services") as ok:
        assert ok.status == 200


def test_double_answers_writes_with_405_and_keeps_serving(api: FakeApiServer) -> None:
    req = urllib.request.Request(api.url + "/api/v1/namespaces/default/services", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 405
    assert core(api).list_service_for_all_namespaces().items == []


def test_double_listens_on_loopback_only(api: FakeApiServer) -> None:
    assert api.url.startswith("http://127.0.0.1:")


def test_a_transform_applies_to_listed_and_watched_objects(api: FakeApiServer) -> None:
    api.apply(service("a", ip="10.96.0.1"))
    api.apply(service("boom", ip="10.96.0.2"))

    def slim(o: Any) -> Any:
        if o["metadata"]["name"] == "boom":
            raise ValueError("a transform that fails")
        return {"metadata": o["metadata"], "slim": True}

    rec = Recorder()
    r = reflector(api, rec, transform=slim)
    try:
        assert r.store[("default", "a")] == {"metadata": r.store[("default", "a")]["metadata"], "slim": True}
        assert "spec" in r.store[("default", "boom")]  # kept as it came
        api.apply(service("b", ip="10.96.0.3"))
        until(lambda: ("default", "b") in r.store)
        stored = r.store[("default", "b")]
        assert stored is not None and stored["slim"] is True
        event_obj = next(e.obj for e in rec.events if e.key == ("default", "b"))
        assert event_obj is not None and event_obj["slim"] is True
    finally:
        r.stop()


def test_list_function_sends_what_the_generated_function_sends(api: FakeApiServer) -> None:
    """The list function made from the ApiClient (no CoreV1Api and its models) makes the
    same requests as the generated one, and its errors are the same ApiException."""
    for i in range(5):
        api.apply(service(f"s{i}"))
    ac = client.ApiClient(api.configuration())
    made = list_function(ac, "/api/v1/services")
    assert made is not None
    generated = client.CoreV1Api(ac).list_service_for_all_namespaces
    kw: Dict[str, Any] = {
        "limit": 2,
        "label_selector": "a=b",
        "field_selector": "metadata.name!=x",
        "_request_timeout": (5, 30),
    }
    for f in (made, generated):
        resp: Any = f(**kw, _preload_content=False)
        assert resp.status == 200 and b'"ServiceList"' in resp.data
    a, b = api.requests[-2:]
    assert (a.method, a.path, a.query) == (b.method, b.path, b.query)
    assert a.query == {"limit": "2", "labelSelector": "a=b", "fieldSelector": "metadata.name!=x"}
    # A whole reflector cycle through it: paginated list, watch, events, 429 with Retry-After.
    cfg = api.configuration()
    cfg.retries = False  # the reflector, not urllib3, honours Retry-After
    rec = Recorder()
    r = reflector(
        api, rec, list_func=list_function(client.ApiClient(cfg), "/api/v1/services"), page_size=2, watch_timeout=30
    )
    try:
        assert sorted(k for _, k in r.store) == [f"s{i}" for i in range(5)] and r.stats.list_pages == 3
        until(lambda: api.watches_open == 1)
        w = api.watch_requests()[-1].query
        assert w["watch"] == "true" and w["allowWatchBookmarks"] == "true" and w["resourceVersion"] == "5"
        api.apply(service("s9"))
        until(lambda: ("default", "s9") in r.snapshot())
        api.fail_next(429, retry_after=1, watch=True)
        api.close_watches()
        until(lambda: r.stats.throttled == 1)
        assert 1.0 in r.stats.waits
    finally:
        r.stop()
    with pytest.raises(TypeError, match="unexpected argument 'pretty'"):
        made(pretty=True)
    with pytest.raises(client.ApiException) as err:
        list_function(ac, "/api/v1/nothing-here")(limit=1)  # type: ignore[misc]
    assert err.value.status == 404
    assert list_function(object(), "/api/v1/services") is None  # a client of another generation


def test_list_items_decodes_one_item_at_a_time() -> None:
    doc = '\n { "kind" : "ServiceList" ,\t"items" : [ {"a": [1, {"b": "\\u00e9]"}]} ,\r\n[], "x\\"y", null ] , '
    doc += '"metadata":{"continue":"t"} }\n'
    top: dict[str, Any] = {}
    it = list_items(doc, top)
    assert next(it) == {"a": [1, {"b": "\u00e9]"}]} and top == {"kind": "ServiceList"}
    assert list(it) == [[], 'x"y', None] and top == {"kind": "ServiceList", "metadata": {"continue": "t"}}
    assert list(list_items('{"items":[]}', {})) == [] and list(list_items("{}", {})) == []
    for bad in (
        "",
        "[]",
        '{"items":[1,2',
        '{"items":[1 2]}',
        '{"items":[1,]}',
        '{"a":1} x',
        '{"a" 1}',
        "{,}",
        '{"a":1,}',
    ):
        with pytest.raises(ValueError):
            list(list_items(bad, {}))


def test_a_relist_of_unchanged_objects_keeps_the_objects_and_keys_it_holds(api: FakeApiServer) -> None:
    for i in range(4):
        api.apply(service(f"s{i}"))
    rec = Recorder()
    r = reflector(api, rec, watch_timeout=1, read_timeout_margin=1, page_size=3)
    try:
        until(lambda: api.watches_open == 1)
        held = {k: (k, o) for k, o in r.store.items()}
        api.stall_watches()
        api.apply(service("s1", ip="10.96.0.9"))
        api.delete("Service", "default", "s2")
        api.compact()
        rec.clear()
        until(lambda: r.stats.lists == 2 and ("SYNCED", None) in rec.kinds())
        assert sorted(rec.kinds()) == [("DELETED", "s2"), ("MODIFIED", "s1"), ("SYNCED", None)]
        for k, o in r.store.items():
            old_key, old_obj = held[k]
            assert k is old_key  # the key object it held, not the one decoded from the new LIST
            assert (o is old_obj) == (k[1] != "s1")
    finally:
        r.stop()
