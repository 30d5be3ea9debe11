"""The node agent against the API server double, through the real ``kubernetes`` client on loopback.

A recording stand-in for the Balancer shows what the agent writes (no root
needed); tests/system/test_kubernetes_lab.py runs it on real Balancers and sockets.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator, List, Tuple

import pytest
from helpers import in_ci
from k8s_objects import RecordingBalancer, endpoint, eslice, node, service

from socklb.errors import InvalidValueError
from socklb.kubernetes.agent import Agent, Samples, parse_trigger_time
from socklb.kubernetes.testing import FakeApiServer

try:
    import kubernetes  # noqa: F401  (whether it imports is all this module asks)

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


FAST = {"watch_timeout": 5, "read_timeout_margin": 2, "backoff_initial": 0.05, "backoff_max": 0.3}
K80 = ("10.96.0.10", 80, "tcp")


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


def make_agent(api: FakeApiServer, lb: Any, node_name: str = "node-a", **kw: Any) -> Agent:
    kw.setdefault("reflector_options", FAST)
    return Agent(lb, node_name=node_name, api_client=api.api_client(), **kw)


def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.005)


@pytest.fixture
def running(api: FakeApiServer) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(lb: Any, **kw: Any) -> Agent:
        a = make_agent(api, lb, **kw)
        agents.append(a)
        a.start()
        assert a.wait_synced(15), a.stats()
        return a

    yield start
    for a in agents:
        a.stop()


def web(api: FakeApiServer, n: int = 2, name: str = "web", ip: str = "10.96.0.10", **kw: Any) -> None:
    api.apply(service(name, ip))
    api.apply(eslice(f"{name}-a", name, [endpoint(f"10.244.{i + 1}.2") for i in range(n)], **kw))


def test_first_sync_is_one_full_sync_then_nothing_without_changes(api: FakeApiServer, running: Any) -> None:
    web(api)
    api.apply(service("db", "10.96.0.11", ports=[("pg", 5432, "TCP")]))
    api.apply(node("node-a", zone="z1"))
    lb = RecordingBalancer()
    agent = running(lb)
    syncs = lb.ops("sync")
    assert len(syncs) == 1 and lb.ops("upsert", "remove") == []
    assert sorted(syncs[0].arg) == [K80, ("10.96.0.11", 5432, "tcp")]
    assert lb.backends(K80) == [("10.244.1.2", 8080, "active"), ("10.244.2.2", 8080, "active")]
    assert agent.node.zone == "z1"
    time.sleep(0.2)
    assert len(lb.calls) == 1
    st = agent.stats()
    assert st["full_syncs"] == 1 and st["services"] == 2 and st["frontends"] == 2


def test_an_event_writes_only_the_services_it_touched(api: FakeApiServer, running: Any) -> None:
    for i in range(20):
        web(api, name=f"s{i}", ip=f"10.96.1.{i + 1}")
    lb = RecordingBalancer()
    agent = running(lb)
    lb.clear()
    api.apply(eslice("s7-a", "s7", [endpoint("10.244.9.9")]))
    until(lambda: lb.backends(("10.96.1.8", 80, "tcp")) == [("10.244.9.9", 8080, "active")])
    assert agent.wait_idle()
    assert [(c.op, c.arg.key) for c in lb.calls] == [("upsert", ("10.96.1.8", 80, "tcp"))]
    # A new Service, then its removal: one upsert, one remove, never a sync.
    lb.clear()
    web(api, name="new", ip="10.96.2.1")
    until(lambda: ("10.96.2.1", 80, "tcp") in lb.programmed)
    api.delete("Service", "default", "new")
    until(lambda: ("10.96.2.1", 80, "tcp") not in lb.programmed)
    assert {c.op for c in lb.calls} == {"upsert", "remove"}
    assert len(lb.programmed) == 20
    assert agent.stats()["full_syncs"] == 1


def test_a_slice_change_that_changes_nothing_writes_nothing(api: FakeApiServer, running: Any) -> None:
    web(api)
    lb = RecordingBalancer()
    agent = running(lb)
    lb.clear()
    obj = api.get("EndpointSlice", "default", "web-a")
    assert obj is not None
    obj["metadata"]["labels"]["unrelated"] = "x"
    api.apply(obj)
    until(lambda: agent.stats()["endpointslice_events"] >= 2)
    assert agent.wait_idle()
    assert lb.calls == []


def test_changes_are_coalesced_over_the_minimum_sync_period(api: FakeApiServer, running: Any) -> None:
    for i in range(5):
        web(api, name=f"s{i}", ip=f"10.96.1.{i + 1}")
    lb = RecordingBalancer()
    agent = running(lb, min_sync_period=0.5)
    applies = agent.stats()["applies"]
    lb.clear()
    time.sleep(0.6)  # the next apply may start at once
    for round_ in range(4):
        for i in range(5):
            eps = [endpoint(f"10.244.{i + 1}.{round_ + 3}")]
            api.apply(eslice(f"s{i}-a", f"s{i}", eps))
    until(
        lambda: all(
            lb.backends((f"10.96.1.{i + 1}", 80, "tcp")) == [(f"10.244.{i + 1}.6", 8080, "active")] for i in range(5)
        ),
        what="the last round applied",
    )
    assert agent.wait_idle()
    # 20 changes: the first apply starts with the first event(s), the rest wait
    # for the period and go in one or two more; never one apply per event.
    done = agent.stats()["applies"] - applies
    assert 1 <= done <= 4, done
    ups = lb.ops("upsert")
    assert len(ups) < 20
    starts = sorted({round(c.at, 2) for c in ups})
    assert all(b - a >= 0.4 for a, b in zip(starts, starts[1:])), starts


def test_a_relist_after_410_is_a_full_sync(api: FakeApiServer, running: Any) -> None:
    web(api)
    web(api, name="gone", ip="10.96.0.12")
    lb = RecordingBalancer()
    agent = running(lb, reflector_options={**FAST, "watch_timeout": 1, "read_timeout_margin": 1})
    before = agent.stats()["full_syncs"]
    # Changes made while the streams are stalled, then the history compacted: once the
    # read timeout notices, the new watch gets 410, the re-list a diff, the agent a full sync.
    api.stall_watches()
    api.delete("Service", "default", "gone")
    api.apply(eslice("web-a", "web", [endpoint("10.244.7.7")]))
    api.compact()
    until(lambda: agent.stats()["full_syncs"] > before, timeout=15, what="a full sync after the re-list")
    until(lambda: lb.backends(K80) == [("10.244.7.7", 8080, "active")])
    until(lambda: agent.services_reflector.stats.gone >= 1 and agent.slices_reflector.stats.gone >= 1)
    until(lambda: ("10.96.0.12", 80, "tcp") not in lb.programmed)
    assert agent.wait_idle()
    assert lb.ops("sync")[-1].arg.keys() == {K80}


def test_malformed_objects_never_raise_and_remove_nothing(
    api: FakeApiServer, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    web(api)
    lb = RecordingBalancer()
    agent = running(lb)
    caplog.set_level(logging.WARNING, "socklb.kubernetes")
    bad_svc = service("bad", "10.96.0.99")
    bad_svc["spec"]["ports"] = "eighty"
    api.apply(bad_svc)
    api.apply(
        {
            "kind": "EndpointSlice",
            "metadata": {"name": "web-bad", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": 7}],
        }
    )
    api.apply(
        {
            "kind": "EndpointSlice",
            "metadata": {"name": "x", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "Martian",
        }
    )
    api.apply({"kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": 5}}})
    until(lambda: agent.stats()["notes"] >= 2)
    assert agent.wait_idle()
    assert lb.backends(K80) == [("10.244.1.2", 8080, "active"), ("10.244.2.2", 8080, "active")]
    assert ("10.96.0.99", 80, "tcp") not in lb.programmed
    assert agent.stats()["apply_errors"] == 0
    assert any("bad" in r.getMessage() for r in caplog.records)
    assert agent.healthy()[0]


def test_a_frontend_claimed_twice_goes_to_the_first_and_then_to_the_other(api: FakeApiServer, running: Any) -> None:
    api.apply(service("b-second", "10.96.0.10"))
    api.apply(eslice("b-second-1", "b-second", [endpoint("10.244.2.2")]))
    api.apply(service("a-first", "10.96.0.10"))
    api.apply(eslice("a-first-1", "a-first", [endpoint("10.244.1.2")]))
    lb = RecordingBalancer()
    running(lb)
    assert lb.backends(K80) == [("10.244.1.2", 8080, "active")]
    api.delete("Service", "default", "a-first")
    until(lambda: lb.backends(K80) == [("10.244.2.2", 8080, "active")], what="the other Service takes the frontend")
    api.apply(service("a-first", "10.96.0.10"))
    until(lambda: lb.backends(K80) == [("10.244.1.2", 8080, "active")], what="the first takes it back")


def test_slices_move_between_services_with_their_label(api: FakeApiServer, running: Any) -> None:
    web(api)
    api.apply(service("other", "10.96.0.11"))
    lb = RecordingBalancer()
    running(lb)
    api.apply(eslice("web-a", "other", [endpoint("10.244.1.2")]))
    k11 = ("10.96.0.11", 80, "tcp")
    until(lambda: lb.backends(k11) == [("10.244.1.2", 8080, "active")] and lb.backends(K80) == [])


def test_network_programming_latency_from_the_trigger_time(api: FakeApiServer, running: Any) -> None:
    web(api)
    lb = RecordingBalancer()
    agent = running(lb)
    old = time.time() - 3600  # older than the agent: not counted
    api.apply(eslice("web-a", "web", [endpoint("10.244.3.2")], trigger=old))
    until(lambda: lb.backends(K80) == [("10.244.3.2", 8080, "active")])
    assert agent.stats()["network_programming_seconds"]["count"] == 0
    for i in range(5):
        api.apply(eslice("web-a", "web", [endpoint(f"10.244.4.{i + 2}")], trigger=time.time()))
        want = [(f"10.244.4.{i + 2}", 8080, "active")]

        def programmed(want: List[Tuple[str, int, str]] = want) -> bool:
            return lb.backends(K80) == want

        until(programmed)
    st = agent.stats()
    lat = st["network_programming_seconds"]
    assert lat["count"] == 5
    assert 0 <= lat["p50"] <= lat["max"] < 5.0  # loopback and a recording balancer: far less; slack for load
    assert st["apply_seconds"]["count"] >= 6 and st["full_sync_seconds"]["count"] == 1
    assert "socklb_network_programming_duration_seconds_count 5" in agent.metrics()


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_healthz_follows_the_age_of_pending_changes(api: FakeApiServer) -> None:
    web(api)
    api.fail_next(500, times=3, match="endpointslices", watch=False)
    lb = RecordingBalancer(fail=[("10.96.0.77", 80, "tcp")])
    agent = make_agent(api, lb, healthz_port=0, healthz_timeout=0.5, retry_initial=0.05, retry_max=0.1)
    agent.start()
    try:
        url = f"http://127.0.0.1:{agent.healthz_port}/healthz"
        code, body = get(url)
        if not agent.first_sync.is_set():
            assert code == 503 and body["synced"] is False
        assert agent.wait_synced(15)
        until(lambda: get(url)[0] == 200)
        assert get(url)[1]["lastUpdated"]
        # A service the balancer refuses: retried, and after healthz_timeout the agent is unhealthy.
        web(api, name="refused", ip="10.96.0.77")
        until(lambda: agent.stats()["writes_failed"] >= 2)
        until(lambda: get(url)[0] == 503, what="503 once a change waited longer than the timeout")
        assert get(url)[1]["pendingSeconds"] > 0.5
        lb.fail.clear()  # the retry succeeds: healthy again
        until(lambda: get(url)[0] == 200, what="200 after the retry succeeded")
        assert ("10.96.0.77", 80, "tcp") in lb.programmed
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.healthz_port}/metrics", timeout=5) as r:
            assert b"socklb_agent_writes_failed_total" in r.read()
    finally:
        agent.stop()


def test_a_full_sync_that_fails_programs_one_by_one_and_removes_what_is_gone(api: FakeApiServer) -> None:
    from socklb import Backend, Service

    web(api)
    web(api, name="refused", ip="10.96.0.77")
    lb = RecordingBalancer(fail=[("10.96.0.77", 80, "tcp")])  # makes the full sync raise
    # What an earlier agent left programmed (adopted pins): one Service deleted since, one unchanged.
    gone = Service("10.96.0.99", 80, "tcp", [Backend("10.244.9.2", 8080)])
    same = Service("10.96.0.10", 80, "tcp", [Backend("10.244.1.2", 8080), Backend("10.244.2.2", 8080)])
    lb.programmed = {gone.key: gone, same.key: same}
    agent = make_agent(api, lb, retry_initial=0.05, retry_max=0.1)
    agent.start()
    try:
        assert agent.wait_synced(15), agent.stats()
        assert gone.key not in lb.programmed  # removed one by one
        assert lb.programmed[K80] == same
        writes = {(c.op, c.arg if c.op == "remove" else c.arg.key) for c in lb.ops("upsert", "remove")}
        # the refused one tried (and retried), the deleted one removed, the unchanged one not rewritten
        assert writes == {("upsert", ("10.96.0.77", 80, "tcp")), ("remove", gone.key)}, writes
        st = agent.stats()
        assert st["removes"] == 1 and st["upserts"] == 0 and st["retrying"] == 1, st
    finally:
        agent.stop()


def test_the_node_zone_label_selects_zone_hints(api: FakeApiServer, running: Any) -> None:
    api.apply(service("web", "10.96.0.10"))
    eps = [endpoint("10.244.1.2", zones=["z1"]), endpoint("10.244.2.2", zones=["z2"])]
    api.apply(eslice("web-a", "web", eps))
    api.apply(node("node-a", zone="z1"))
    api.apply(node("node-b", zone="z2"))
    lb = RecordingBalancer()
    agent = running(lb)
    assert lb.backends(K80) == [("10.244.1.2", 8080, "active")]
    api.apply(node("node-a", zone="z2"))  # relabelled: a full sync with the new zone
    until(lambda: lb.backends(K80) == [("10.244.2.2", 8080, "active")])
    assert agent.node.zone == "z2"
    api.delete("Node", None, "node-a")  # no zone: no hints used
    until(lambda: len(lb.backends(K80)) == 2)


def test_internal_traffic_policy_local_and_the_proxy_name(api: FakeApiServer, running: Any) -> None:
    api.apply(service("loc", "10.96.0.10", internalTrafficPolicy="Local"))
    api.apply(eslice("loc-a", "loc", [endpoint("10.244.1.2", node="node-a"), endpoint("10.244.2.2", node="node-b")]))
    api.apply(service("mine", "10.96.0.20", labels={"service.kubernetes.io/service-proxy-name": "socklb"}))
    api.apply(service("theirs", "10.96.0.30", labels={"service.kubernetes.io/service-proxy-name": "other"}))
    lb_a, lb_b = RecordingBalancer(), RecordingBalancer()
    running(lb_a, node_name="node-a")
    agent_b = running(lb_b, node_name="node-b", proxy_name="socklb")
    assert lb_a.backends(K80) == [("10.244.1.2", 8080, "active")]
    assert set(lb_a.programmed) == {K80}
    assert set(lb_b.programmed) == {("10.96.0.20", 80, "tcp")}  # the proxy name takes only its own Services
    api.apply(
        service(
            "loc",
            "10.96.0.10",
            internalTrafficPolicy="Local",
            labels={"service.kubernetes.io/service-proxy-name": "socklb"},
        )
    )
    until(lambda: lb_b.backends(K80) == [("10.244.2.2", 8080, "active")])
    api.apply(eslice("loc-a", "loc", [endpoint("10.244.1.2", node="node-a")]))
    until(lambda: K80 in lb_b.programmed and lb_b.backends(K80) == [])  # none local: refused at once
    until(lambda: agent_b.stats()["no_local_endpoints"] == 1)


def test_stop_is_prompt_and_run_blocks_until_it(api: FakeApiServer) -> None:
    import threading

    web(api)
    lb = RecordingBalancer()
    agent = make_agent(api, lb)
    t = threading.Thread(target=agent.run)
    t.start()
    assert agent.wait_synced(15)
    t0 = time.monotonic()
    agent.stop()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 8
    assert not agent.healthy()[0]


def test_external_ips_are_served_only_inside_the_allowed_ranges(api: FakeApiServer, running: Any) -> None:
    """The agent hands its allow-list to translate(): none by default (DenyServiceExternalIPs),
    the listed ranges when given; a bad range is refused before anything starts."""
    api.apply(service("ext", "10.96.0.20", externalIPs=["192.0.2.7", "198.51.100.9"]))
    api.apply(eslice("ext-a", "ext", [endpoint("10.244.1.2")]))
    lb = RecordingBalancer()
    running(lb)
    assert sorted(k[0] for k in lb.programmed) == ["10.96.0.20"]
    lb2 = RecordingBalancer()
    agent = running(lb2, external_ip_cidrs=["192.0.2.0/24"])
    assert [str(n) for n in agent.external_ip_cidrs] == ["192.0.2.0/24"]
    assert sorted(k[0] for k in lb2.programmed) == ["10.96.0.20", "192.0.2.7"]
    with pytest.raises(InvalidValueError, match="external_ip_cidrs"):
        make_agent(api, RecordingBalancer(), external_ip_cidrs=["not-a-range"])


def test_helpers() -> None:
    assert parse_trigger_time("2026-12-01T10:00:00.123456789Z") == pytest.approx(
        parse_trigger_time("2026-12-01T10:00:00Z") + 0.123456789  # type: ignore[operator]
    )
    assert parse_trigger_time("2026-13-01T10:00:00Z") is None and parse_trigger_time(None) is None
    s = Samples(keep=3)
    for v in (5.0, 1.0, 2.0, 3.0):
        s.add(v)
    assert s.summary()["count"] == 4 and s.summary()["max"] == 3.0 and s.quantile(0.5) == 2.0


def test_compact_objects_translate_exactly_as_the_originals() -> None:
    from socklb.kubernetes import Node, translate
    from socklb.kubernetes.agent import compact, expand

    svcs = [
        service("web", ["10.96.0.10", "fd00:96::a"], ports=[("http", 80, "TCP"), ("dns", 53, "UDP")]),
        service(
            "aff", "10.96.0.11", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 5}}
        ),
        service("loc", "10.96.0.12", internalTrafficPolicy="Local", externalIPs=["192.0.2.7"]),
        service("mine", "10.96.0.13", labels={"service.kubernetes.io/service-proxy-name": "other", "x": "y"}),
        service("bad", "10.96.0.14"),
    ]
    svcs[4]["spec"]["ports"] = "eighty"
    svcs[2]["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.8"}, {"ip": "192.0.2.9", "ipMode": "Proxy"}]}}
    svcs[0]["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    eps = [
        endpoint("10.244.1.2", node="node-a", zones=["z1"]),
        endpoint("10.244.2.2", node="node-b", ready=False, serving=True, terminating=True, zones=["z2"]),
        endpoint("10.244.3.2", ready=None, serving=None),
        {"addresses": ["10.244.4.2"], "conditions": {"ready": "yes"}},
        {"addresses": [], "targetRef": {"kind": "Pod"}},
    ]
    slices = [
        eslice("web-1", "web", eps, ports=[("http", 8080, "TCP"), ("dns", 5353, "UDP")]),
        eslice("web-6", "web", [endpoint("fd00:244:1::2")], family="IPv6", ports=[("http", 8080, "TCP")]),
        eslice("aff-1", "aff", eps[:2]),
        eslice("loc-1", "loc", eps[:3]),
        eslice("mine-1", "mine", eps[:1]),
        {"metadata": {"name": "odd", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": 4},
    ]
    for n in (Node("node-a", zone="z1"), Node("node-b", zone="z2"), Node("node-c")):
        for proxy in (None, "other"):
            want = translate(svcs, slices, n, proxy)
            got = translate(
                [expand(compact(s, "Service")) for s in svcs],
                [expand(compact(s, "EndpointSlice")) for s in slices],
                n,
                proxy,
            )
            assert got == want and want, (n, proxy)
    small = compact(slices[0], "EndpointSlice")
    assert len(small["compact"]) < len(json.dumps(slices[0], separators=(",", ":")))
    assert "managedFields" not in expand(compact(svcs[0], "Service"))["metadata"]


def test_compact_objects_are_small_and_keep_their_resource_versions() -> None:
    from socklb.kubernetes.agent import compact, expand

    eps = [endpoint(f"10.244.{i}.{7 * i + 2}", node=f"worker-{i % 3}") for i in range(10)]
    sl = eslice("web-abcde", "web", eps)
    sl["metadata"].update(uid="6f1c0e2a-9d1b-4c7e-a0f4-3b2d5e6f7a8b", resourceVersion="4711")
    svc = service("web", "10.96.12.34")
    svc["metadata"]["resourceVersion"] = "4712"
    cs, cv = compact(sl, "EndpointSlice"), compact(svc, "Service")
    # The preset dictionary: a slice of 10 endpoints and a ClusterIP Service in ~100 and ~40 bytes.
    assert len(cs.data) < 140 and len(cv.data) < 70, (len(cs.data), len(cv.data))
    assert expand(cs)["endpoints"][3] == {"addresses": ["10.244.3.23"], "conditions": {}, "nodeName": "worker-0"}
    assert expand(cv)["spec"]["clusterIP"] == "10.96.12.34"
    assert (cs.rv, cv.rv, expand(cs)["metadata"]["resourceVersion"], cs["metadata"]["resourceVersion"]) == (
        "4711",
        "4712",
        "4711",
        "4711",
    )
    # Opaque resourceVersions come back as they were given, decimal or not.
    for rv in ("0", "007", "12345678901234567890123", "abc", "\u00b2", "", "1e3"):
        sl["metadata"]["resourceVersion"] = rv
        assert compact(sl, "EndpointSlice").rv == rv
        assert expand(compact(sl, "EndpointSlice"))["metadata"]["resourceVersion"] == rv
    # Key order does not matter (keys are sorted); neither do keys of another type (kept as they came).
    assert expand(compact(dict(reversed(list(sl.items()))), "EndpointSlice")) == expand(compact(sl, "EndpointSlice"))
    odd = {"metadata": {"name": "x", 1: 2}, "addressType": "IPv4"}
    assert expand(compact(odd, "EndpointSlice"))["addressType"] == "IPv4"


def test_the_agent_lists_through_the_api_client_without_the_generated_api_classes(api: FakeApiServer) -> None:
    agent = make_agent(api, RecordingBalancer())
    names = [r._list_func.__name__ for r in agent._reflectors]
    assert names == ["list /api/v1/services", "list /apis/discovery.k8s.io/v1/endpointslices", "list /api/v1/nodes"]


def test_docstring_examples_of_the_agent_module() -> None:
    import doctest

    import socklb.kubernetes.agent

    result = doctest.testmod(socklb.kubernetes.agent)
    assert result.attempted > 0 and result.failed == 0


def test_the_command_says_what_is_missing(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from socklb.cli import main

    monkeypatch.delenv("NODE_NAME", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["kubernetes", "--cgroup", "/nonexistent"]) == 2
    assert "--node-name" in capsys.readouterr().err
    assert main(["kubernetes", "--node-name", "n1", "--cgroup", "/nonexistent"]) == 2
    assert "in-cluster" in capsys.readouterr().err


def test_an_unreadable_node_delays_the_first_sync_only_so_long(api: FakeApiServer, running: Any) -> None:
    web(api)
    api.apply(node("node-a", zone="z1"))
    api.fail_next(403, times=10_000, match="/nodes")  # say RBAC forbids reading Nodes
    lb = RecordingBalancer()
    agent = running(lb, node_timeout=0.5)
    assert len(lb.backends(K80)) == 2 and agent.node.zone is None
    assert agent.node_reflector.stats.errors >= 1


def test_the_node_objects_addresses_go_to_the_balancer_and_node_ports_are_programmed(
    api: FakeApiServer, running: Any
) -> None:
    svc = service("web", "10.96.0.10", type="NodePort")
    svc["spec"]["ports"][0]["nodePort"] = 30080
    api.apply(svc)
    api.apply(eslice("web-a", "web", [endpoint("10.244.1.2")]))
    api.apply(
        node("node-a", addresses=[("InternalIP", "192.0.2.4"), ("Hostname", "node-a"), ("ExternalIP", "fe80::1")])
    )
    lb = RecordingBalancer()
    agent = running(lb)
    until(lambda: ("0.0.0.0", 30080, "tcp") in lb.programmed, what="the NodePort")
    assert lb.programmed[("0.0.0.0", 30080, "tcp")].frontend.value == "node_port"
    # Link-local addresses need a zone: not a NodePort address.
    assert lb.node_addresses == [["192.0.2.4"]]
    api.apply(node("node-a", addresses=[("InternalIP", "192.0.2.4"), ("InternalIP", "2001:db8::4")]))
    until(lambda: lb.node_addresses[-1] == ["192.0.2.4", "2001:db8::4"], what="the new node address")
    assert agent.wait_idle()
    n = len(lb.node_addresses)
    api.apply(node("node-a", zone="z1", addresses=[("InternalIP", "192.0.2.4"), ("InternalIP", "2001:db8::4")]))
    until(lambda: agent.node.zone == "z1", what="the zone")
    assert agent.wait_idle() and len(lb.node_addresses) == n  # unchanged addresses are not written again


def test_node_addresses_mode_is_checked(api: FakeApiServer) -> None:
    with pytest.raises(ValueError, match="node_addresses"):
        make_agent(api, RecordingBalancer(), node_addresses="guess")
