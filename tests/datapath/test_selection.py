"""Service semantics through real sockets: algorithms, weights, affinity,
backend states, declarative sync and atomic updates."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Sequence

import pytest
from helpers import BACKENDS, TCP_PORT, UDP_PORT, VIP4, VIP6, World, dial, refused
from stats_check import assert_split

from socklb import Affinity, Algorithm, Backend, BackendState, Balancer, Service


def backends(
    world: World, names: Sequence[str] = BACKENDS, v6: bool = False, port: int = TCP_PORT, **kw: object
) -> list[Backend]:
    return [Backend(p.ipv6 if v6 else p.ipv4, port, **kw) for p in world.pods(*names)]  # type: ignore[arg-type]


def served(world: World, n: int, host: str = VIP4) -> Counter[str]:
    res = dial(world.client, "tcp", host, 80, n)
    assert res["errors"] == []
    return Counter(res["served"])


# --- algorithms and weights -------------------------------------------------------


def test_random_is_uniform(world: World, balancer: Balancer) -> None:
    balancer.upsert(Service(VIP4, 80, "tcp", backends(world)))
    balancer.attach(world.client.cgroup)
    c = served(world, 900)
    assert_split([c[n] for n in BACKENDS], [1] * len(BACKENDS), c)


def test_weighted_follows_weights(world: World, balancer: Balancer) -> None:
    weights = {"b1": 1, "b2": 3, "b3": 6}
    bs = [Backend(world.backends[n].ipv6, TCP_PORT, weight=w) for n, w in weights.items()]
    balancer.upsert(Service(VIP6, 80, "tcp", bs, algorithm="weighted"))
    balancer.attach(world.client.cgroup)
    n = 1000
    c = served(world, n, VIP6)
    assert_split([c[k] for k in weights], list(weights.values()), c)


def test_weight_zero_drains(world: World, balancer: Balancer) -> None:
    bs = [Backend(world.backends["b1"].ipv4, TCP_PORT, weight=0), *backends(world, ("b2", "b3"))]
    for algo in Algorithm:
        balancer.upsert(Service(VIP4, 80, "tcp", bs, algorithm=algo))
        balancer.attach(world.client.cgroup) if not balancer.attachments() else None
        assert set(served(world, 60)) == {"b2", "b3"}, algo


def test_maglev_spreads_by_weight_through_sockets(world: World) -> None:
    with Balancer(maglev_size=1021) as lb:
        bs = [Backend(world.backends[n].ipv4, TCP_PORT, weight=w) for n, w in (("b1", 1), ("b2", 1), ("b3", 2))]
        lb.upsert(Service(VIP4, 80, "tcp", bs, algorithm="maglev"))
        lb.attach(world.client.cgroup)
        n = 800
        c = served(world, n)
        assert_split([c["b1"], c["b2"], c["b3"]], [1, 1, 2], c)


# --- session affinity (ClientIP) ----------------------------------------------------


def test_affinity_gives_15_identical_backends(world: World, balancer: Balancer) -> None:
    balancer.upsert(Service(VIP4, 80, "tcp", backends(world), affinity=Affinity()))
    balancer.attach(world.client.cgroup)
    balancer.attach(world.outsider.cgroup)
    res = dial(world.client, "tcp", VIP4, 80, 15)
    assert res["errors"] == [] and len(set(res["served"])) == 1
    # Repeated runs (new processes, same pod) keep the backend: the client is the pod.
    assert set(dial(world.client, "tcp", VIP4, 80, 15)["served"]) == set(res["served"])
    assert balancer.counters()["affinity_hit"] >= 29
    # Another pod gets its own affinity entry.
    assert len(set(dial(world.outsider, "tcp", VIP4, 80, 15)["served"])) == 1


@pytest.mark.slow
def test_affinity_expires(world: World, balancer: Balancer) -> None:
    balancer.upsert(Service(VIP4, 80, "tcp", backends(world), affinity=Affinity(timeout=1)))
    balancer.attach(world.client.cgroup)
    seen = set()
    for _ in range(10):
        res = dial(world.client, "tcp", VIP4, 80, 4)
        assert len(set(res["served"])) == 1, res  # within the timeout: one backend
        seen |= set(res["served"])
        time.sleep(1.2)
    assert len(seen) > 1, "affinity never expired"


@pytest.mark.slow
def test_affinity_transitions_both_ways(world: World, balancer: Balancer) -> None:
    plain = Service(VIP4, 80, "tcp", backends(world))
    sticky = Service(VIP4, 80, "tcp", backends(world), affinity=Affinity(60))
    balancer.attach(world.client.cgroup)
    balancer.upsert(plain)
    assert set(served(world, 60)) == set(BACKENDS)
    balancer.upsert(sticky)
    assert len(served(world, 20)) == 1
    balancer.upsert(plain)
    assert set(served(world, 60)) == set(BACKENDS)
    # Back on: a fresh choice (old entries were dropped), then sticky again.
    firsts = set()
    for _ in range(12):
        balancer.upsert(plain)
        balancer.upsert(sticky)
        c = served(world, 3)
        assert len(c) == 1
        firsts |= set(c)
    assert len(firsts) > 1, "affinity entries survived switching affinity off"


def test_affinity_drops_a_removed_or_unusable_backend(world: World, balancer: Balancer) -> None:
    svc = Service(VIP4, 80, "tcp", backends(world), affinity=Affinity())
    balancer.upsert(svc)
    balancer.attach(world.client.cgroup)
    (first,) = served(world, 5)
    rest = [n for n in BACKENDS if n != first]
    balancer.upsert(svc.with_backends(backends(world, rest)))
    (second,) = served(world, 10)
    assert second in rest
    # Quarantining the affine backend moves the client too, and it stays moved.
    states = [
        Backend(
            world.backends[n].ipv4, TCP_PORT, state=BackendState.QUARANTINED if n == second else BackendState.ACTIVE
        )
        for n in rest
    ]
    balancer.upsert(svc.with_backends(states))
    (third,) = served(world, 10)
    assert third in rest and third != second


# --- backend states ------------------------------------------------------------------


def test_terminating_only_when_no_active(world: World, balancer: Balancer) -> None:
    b1, b2, b3 = world.pods(*BACKENDS)

    def svc(s1: str, s2: str, s3: str) -> Service:
        return Service(
            VIP4,
            80,
            "tcp",
            [
                Backend(b1.ipv4, TCP_PORT, state=s1),
                Backend(b2.ipv4, TCP_PORT, state=s2),
                Backend(b3.ipv4, TCP_PORT, state=s3),
            ],
        )

    balancer.attach(world.client.cgroup)
    balancer.upsert(svc("active", "terminating", "terminating"))
    assert set(served(world, 40)) == {"b1"}
    balancer.upsert(svc("quarantined", "terminating", "terminating"))
    assert set(served(world, 60)) == {"b2", "b3"}
    balancer.upsert(svc("maintenance", "terminating", "active"))
    assert set(served(world, 30)) == {"b3"}
    balancer.upsert(svc("maintenance", "quarantined", "maintenance"))
    res = dial(world.client, "tcp", VIP4, 80, 3)
    assert res["errors"] == [refused()] * 3
    # The tables keep all three backends even when none is chosen.
    assert len(balancer.dump()["backends"]) == 3


def test_no_usable_backend_refuses_udp_too(world: World, balancer: Balancer) -> None:
    bs = [Backend(p.ipv4, UDP_PORT, state="maintenance") for p in world.pods(*BACKENDS)]
    balancer.upsert(Service(VIP4, 53, "udp", bs))
    balancer.attach(world.client.cgroup)
    assert dial(world.client, "udp", VIP4, 53, 2)["errors"] == [refused()] * 2
    assert dial(world.client, "udp", VIP4, 53, 1, "--connected")["errors"] == [refused()]


# --- declarative sync and atomic updates ------------------------------------------------


def many(world: World, n: int, names: Sequence[str] = BACKENDS) -> list[Service]:
    return [Service(f"10.96.{1 + i // 250}.{1 + i % 250}", 80, "tcp", backends(world, names)) for i in range(n)]


def test_sync_applies_only_the_difference(world: World, balancer: Balancer) -> None:
    svcs = many(world, 300)
    r = balancer.sync(svcs)
    assert len(r.added) == 300 and not r.removed and not r.updated
    assert balancer.sync(svcs).map_writes == 0
    changed = list(svcs)
    changed[150] = svcs[150].with_backends(backends(world, ("b1", "b2")))
    del changed[10]
    changed.append(Service(VIP4, 80, "tcp", backends(world)))
    r = balancer.sync(changed)
    assert r.updated == (svcs[150].key,)
    assert r.removed == (svcs[10].key,)
    assert r.added == ((VIP4, 80, "tcp"),)
    assert r.unchanged == 298
    # updated: 1 backend deleted, 2 new slots, 1 service, 3 old slots deleted;
    # removed: 1 service, 3 slots, 3 backends; added: 3 backends, 3 slots, 1 service
    assert r.map_writes == 7 + 7 + 7
    balancer.attach(world.client.cgroup)
    assert set(served(world, 30)) == set(BACKENDS)
    assert set(dial(world.client, "tcp", svcs[150].address, 80, 30)["served"]) == {"b1", "b2"}
    assert balancer.sync([]).removed and balancer.dump()["services"] == {}


def test_updates_are_atomic_under_connect_load(world: World, balancer: Balancer) -> None:
    """A tight connect loop while another thread rewrites the service thousands of
    times: every connect reaches a backend of the old set or the new one."""
    set_a = Service(VIP4, 80, "tcp", backends(world, ("b1", "b2")))
    set_b = Service(VIP4, 80, "tcp", backends(world, ("b3",)))
    balancer.upsert(set_a)
    balancer.attach(world.client.cgroup)
    stop = threading.Event()
    flips = 0

    def rewrite() -> None:
        nonlocal flips
        while not stop.is_set() and flips < 20000:
            balancer.upsert(set_b if flips % 2 == 0 else set_a)
            flips += 1

    t = threading.Thread(target=rewrite)
    t.start()
    try:
        res = dial(world.client, "tcp", VIP4, 80, 3000, "--deadline", "60")
    finally:
        stop.set()
        t.join()
    print(f"atomic updates: {flips} rewrites during {len(res['served']) + len(res['errors'])} connects")
    assert flips >= 1000, flips
    assert res["errors"] == [], Counter(res["errors"])
    c = Counter(res["served"])
    assert set(c) <= set(BACKENDS) and c["b3"] > 0 and c["b1"] + c["b2"] > 0
    assert balancer.counters()["no_backend"] == 0
    # Old lists and removed backends were cleaned up after every swap.
    assert len(balancer.dump()["slots"]) == len(balancer.get((VIP4, 80, "tcp")).backends)
