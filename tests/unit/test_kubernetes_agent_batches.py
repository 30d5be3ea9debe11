"""The agent writes each batch of dirty Services with one Balancer.apply (issue 21)."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest
from helpers import in_ci
from k8s_objects import RecordingBalancer, endpoint, eslice, service

from socklb.kubernetes.agent import Agent
from socklb.kubernetes.testing import FakeApiServer

try:
    import kubernetes  # noqa: F401  (whether it imports is all this module asks)

    HAVE_KUBERNETES = True
except ImportError:  # the dev extra installs it
    if not in_ci():
        pytest.skip("the kubernetes package is not installed", allow_module_level=True)
    HAVE_KUBERNETES = False  # CI=true: every test here fails (below), none is skipped


@pytest.fixture(autouse=True)
def _kubernetes_is_installed() -> None:
    if not HAVE_KUBERNETES:
        pytest.fail("the kubernetes package is missing: install socklb[dev] (CI=true forbids skipping)")


FAST = {"watch_timeout": 5, "read_timeout_margin": 2, "backoff_initial": 0.05, "backoff_max": 0.3}


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.005)


def start(api: FakeApiServer, lb: Any, **kw: Any) -> Agent:
    kw.setdefault("reflector_options", FAST)
    agent = Agent(lb, node_name="node-a", api_client=api.api_client(), **kw)
    agent.start()
    assert agent.wait_synced(15), agent.stats()
    return agent


def web(api: FakeApiServer, i: int, *ips: str) -> None:
    api.apply(service(f"s{i}", f"10.96.1.{i + 1}"))
    api.apply(eslice(f"s{i}-a", f"s{i}", [endpoint(ip) for ip in ips or (f"10.244.{i + 1}.2",)]))


def test_changes_that_arrive_together_are_one_apply(api: FakeApiServer) -> None:
    for i in range(10):
        web(api, i)
    web(api, 20)
    lb = RecordingBalancer()
    agent = start(api, lb, min_sync_period=0.5)
    try:
        time.sleep(0.6)
        lb.clear()
        applies = agent.stats()["applies"]
        api.apply(eslice("s0-a", "s0", [endpoint("10.244.9.1")]))  # starts an apply at once
        for i in range(1, 10):  # these wait for the period, then go together
            api.apply(eslice(f"s{i}-a", f"s{i}", [endpoint(f"10.244.9.{i + 1}")]))
        api.delete("Service", "default", "s20")
        until(lambda: ("10.96.1.21", 80, "tcp") not in lb.programmed and agent.wait_idle(0.01))
        until(lambda: all(lb.backends((f"10.96.1.{i + 1}", 80, "tcp"))[0][0] == f"10.244.9.{i + 1}" for i in range(10)))
        assert agent.wait_idle()
        batches = lb.batches[-(agent.stats()["applies"] - applies) :]
        # Every apply was one batch, and there were far fewer than the 11 changes.
        assert 1 <= len(batches) <= 3, batches
        assert sum(len(u) for u, _ in batches) == 10
        assert [r for _, r in batches if r] == [[("10.96.1.21", 80, "tcp")]]
        assert max(len(u) + len(r) for u, r in batches) >= 5
        st = agent.stats()
        assert st["writes_failed"] == 0 and st["removes"] == 1
    finally:
        agent.stop()


def test_a_refused_batch_is_written_one_by_one_and_only_the_refused_service_is_retried(api: FakeApiServer) -> None:
    for i in range(3):
        web(api, i)
    refused = ("10.96.1.9", 80, "tcp")
    lb = RecordingBalancer(fail=[refused])
    agent = start(api, lb, min_sync_period=0.3, retry_initial=0.05, retry_max=0.1)
    try:
        time.sleep(0.4)
        lb.clear()
        api.apply(service("s8", "10.96.1.9"))
        api.apply(eslice("s8-a", "s8", [endpoint("10.244.8.2")]))
        for i in range(3):
            api.apply(eslice(f"s{i}-a", f"s{i}", [endpoint(f"10.244.7.{i + 2}")]))
        until(
            lambda: all(
                lb.backends((f"10.96.1.{i + 1}", 80, "tcp")) == [(f"10.244.7.{i + 2}", 8080, "active")]
                for i in range(3)
            )
        )
        until(lambda: agent.stats()["writes_failed"] >= 3, what="the refused service retried")
        assert refused not in lb.programmed and agent.stats()["retrying"] == 1
        # The others went in (in a batch or on their own) and are not written again by the retries.
        ok = [c for c in lb.ops("upsert") if c.arg.key != refused]
        assert len({c.arg.key for c in ok}) == 3
        n_ok = len(ok)
        time.sleep(0.3)
        assert len([c for c in lb.ops("upsert") if c.arg.key != refused]) == n_ok
        lb.fail.clear()
        until(lambda: refused in lb.programmed, what="the retry succeeding")
        until(lambda: agent.stats()["retrying"] == 0)
    finally:
        agent.stop()


def test_kept_slices_translate_exactly_as_the_objects_with_the_same_notes() -> None:
    """keep_slice reads a slice once; translating what it kept gives the same
    services, Local refusals and notes (in the same order) as the object."""
    from socklb.kubernetes import Node
    from socklb.kubernetes.agent import keep_slice
    from socklb.kubernetes.translation import translate_with_notes

    svcs = [
        service("web", ["10.96.0.10", "fd00:96::a"], ports=[("http", 80, "TCP"), ("dns", 53, "UDP")]),
        service("loc", "10.96.0.12", internalTrafficPolicy="Local"),
        service("np", "10.96.0.13", type="NodePort"),
    ]
    svcs[2]["spec"]["ports"][0]["nodePort"] = 30080
    eps = [
        endpoint("10.244.1.2", node="node-a", zones=["z1"]),
        endpoint("10.244.2.2", node="node-b", ready=False, serving=True, terminating=True, zones=["z2"]),
        endpoint("10.244.3.2", ready=None, serving=None),
        {"addresses": ["10.244.4.2"], "conditions": {"ready": "yes"}},
        {"addresses": [], "targetRef": {"kind": "Pod"}},
        {"addresses": ["fd00:244::9"]},
        {"addresses": ["224.0.0.1"]},
        endpoint("10.244.1.2", node="node-b"),
    ]
    slices = [
        eslice("web-1", "web", eps, ports=[("http", 8080, "TCP"), ("dns", 5353, "UDP")]),
        eslice("web-0", "web", [endpoint("10.244.1.2", node="node-a")], ports=[("http", 8081, "TCP")]),
        eslice("web-6", "web", [endpoint("fd00:244:1::2"), endpoint("10.1.1.1")], family="IPv6"),
        eslice("loc-1", "loc", eps[:3]),
        eslice("np-1", "np", [*eps[:2], endpoint("10.244.5.5", node="node-a")]),
        eslice("other-1", "nobody", eps[:1]),
        {"metadata": {"name": "odd", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": 4},
        {
            "metadata": {"name": "bad-ports", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [7],
        },
        {"metadata": {"name": "fqdn", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "FQDN"},
        {"metadata": {"name": "nolabel"}, "addressType": "IPv4"},
    ]
    slices[0]["ports"].append({"name": "x", "protocol": "TCP"})  # no number: ignored, with a note
    for s in slices:
        s["metadata"].setdefault("namespace", "default")
    for n in (Node("node-a", zone="z1"), Node("node-b", zone="z2"), Node("node-c")):
        want = translate_with_notes(svcs, slices, n)
        got = translate_with_notes(svcs, [keep_slice(s) for s in slices], n)
        assert want.services and got.services == want.services, n
        assert got.no_local_endpoints == want.no_local_endpoints
        assert [str(x) for x in got.notes] == [str(x) for x in want.notes] and len(want.notes) > 5


def test_docstring_examples_of_the_agents_modules() -> None:
    import doctest

    from socklb.kubernetes import health, programming, store

    for m in (store, programming, health):
        result = doctest.testmod(m)
        assert result.failed == 0, m
    assert doctest.testmod(store).attempted > 0


def test_freeze_gc_pauses_the_collector_until_the_first_full_sync(api: FakeApiServer) -> None:
    import gc

    web(api, 1)
    api.fail_next(500, times=2, match="endpointslices", watch=False)  # the first sync waits a little
    lb = RecordingBalancer()
    assert gc.isenabled()
    agent = Agent(lb, node_name="node-a", api_client=api.api_client(), reflector_options=FAST, freeze_gc=True)
    try:
        agent.start()
        assert not gc.isenabled()  # paused from the start
        assert agent.wait_synced(15)
        until(lambda: gc.isenabled(), what="the collector running again after the first full sync")
        assert gc.get_freeze_count() > 0 and len(lb.programmed) == 1
    finally:
        agent.stop()
        gc.unfreeze()
        gc.enable()
    # Stopped before any sync: the collector runs again too.
    api.fail_next(500, times=10_000, match="endpointslices", watch=False)
    agent = Agent(lb, node_name="node-a", api_client=api.api_client(), reflector_options=FAST, freeze_gc=True)
    agent.start()
    assert not gc.isenabled()
    agent.stop()
    assert gc.isenabled()
