"""Balancer.apply (issue 21): a partial batch of upserts and removals in one
plan, all or nothing, leaving the services it does not name alone."""

from __future__ import annotations

import dataclasses
import threading
from typing import Dict, List

import pytest
from helpers import BACKENDS, TCP_PORT, VIP4, World, dial, require_root
from test_writer import FailingMap, orphans, same

from socklb import Backend, Balancer, CapacityError, InvalidValueError, KernelError, NotFoundError, Service


def svc(i: int, n: int = 2, port: int = 80) -> Service:
    return Service(f"10.96.7.{i}", port, backends=[Backend(f"10.244.7.{i}", 8080 + j) for j in range(n)])


def snapshot(lb: Balancer) -> Dict[str, Dict[bytes, bytes]]:
    """The maps that hold services, lists and backends, as the kernel has them."""
    d = lb.dump()
    return {k: d[k] for k in ("services", "slots", "backends", "maglev")}


def test_apply_through_the_hooks_changes_only_what_it_names(world: World, balancer: Balancer) -> None:
    pods = world.pods(*BACKENDS)
    everyone = [Backend(p.ipv4, TCP_PORT) for p in pods]
    kept = [Service(f"10.96.8.{i}", 80, "tcp", everyone) for i in range(1, 6)]
    changed = Service(VIP4, 80, "tcp", everyone)
    gone = Service("10.96.9.1", 80, "tcp", everyone)
    balancer.sync([*kept, changed, gone])
    balancer.attach(world.client.cgroup)
    before = {s.key: balancer.get(s.key) for s in kept}
    rows = dict(balancer.dump()["services"])

    new = Service("10.96.9.2", 80, "tcp", everyone[:1])
    r = balancer.apply(upserts=[changed.with_backends(everyone[1:2]), new, kept[0]], removals=[gone.key])
    assert r.added == (new.key,) and r.updated == (changed.key,) and r.removed == (gone.key,)
    assert r.unchanged == 1 and r.changed and r.map_writes > 0
    # The services not named are the very objects programmed before, their map rows untouched.
    assert all(balancer.get(k) is v for k, v in before.items())
    after = balancer.dump()["services"]
    assert sum(1 for k, v in rows.items() if after.get(k) == v) >= len(kept)
    same(balancer)
    assert orphans(balancer) == {"slots": 0, "backends": 0, "maglev": 0, "services": 0}
    # Through the hooks: the update, the new service, the removal, and the others as they were.
    assert set(dial(world.client, "tcp", VIP4, 80, 20)["served"]) == {"b2"}
    assert set(dial(world.client, "tcp", "10.96.9.2", 80, 20)["served"]) == {"b1"}
    assert set(dial(world.client, "tcp", "10.96.8.3", 80, 30)["served"]) == set(BACKENDS)
    assert gone.key not in {s.key for s in balancer.kernel_services()}
    # Applying the same again writes nothing.
    r = balancer.apply(upserts=[changed.with_backends(everyone[1:2]), new])
    assert not r.changed and r.map_writes == 0 and r.unchanged == 2


def test_a_capacity_error_leaves_the_maps_untouched() -> None:
    require_root()
    with Balancer(max_services=4, max_backends=8) as lb:
        lb.sync([svc(1), svc(2), svc(3)])
        before, services = snapshot(lb), lb.services()
        # Too many services at the end (a removal does not make room for two new ones).
        with pytest.raises(CapacityError):
            lb.apply(upserts=[svc(1, 1), svc(4), svc(5), svc(6)], removals=[svc(2).key])
        # Too many backends at the end, though the service count fits.
        with pytest.raises(CapacityError):
            lb.apply(upserts=[svc(1, 4), svc(4, 3)], removals=[svc(3).key])
        assert snapshot(lb) == before and lb.services() == services
        same(lb)
        # What does fit goes in, in one plan.
        r = lb.apply(upserts=[svc(4, 2)], removals=[svc(3).key])
        assert r.added == (svc(4).key,) and r.removed == (svc(3).key,)
        assert lb.services() == [svc(1), svc(2), svc(4, 2)]
        same(lb)


def test_a_kernel_error_in_the_swap_is_rolled_back() -> None:
    require_root()
    with Balancer() as lb:
        lb.sync([svc(1), svc(2), svc(3)])
        before, services = snapshot(lb), lb.services()
        tables = lb._tables
        lb._tables = dataclasses.replace(tables, services=FailingMap(tables.services, "update"))
        with pytest.raises(KernelError):
            lb.apply(upserts=[svc(1, 1), svc(4)], removals=[svc(2)])
        lb._tables = tables
        assert lb.services() == services and snapshot(lb) == before
        assert orphans(lb) == {"slots": 0, "backends": 0, "maglev": 0, "services": 0}
        lb.apply(upserts=[svc(1, 1), svc(4)], removals=[svc(2)])
        assert lb.services() == [svc(1, 1), svc(3), svc(4)]
        same(lb)


def test_removing_a_missing_key_raises_as_remove_does_and_changes_nothing() -> None:
    require_root()
    with Balancer() as lb:
        lb.sync([svc(1), svc(2)])
        before, services = snapshot(lb), lb.services()
        with pytest.raises(NotFoundError) as remove_error:
            lb.remove(svc(9).key)
        with pytest.raises(NotFoundError) as apply_error:
            lb.apply(upserts=[svc(3)], removals=[svc(1).key, svc(9).key])
        assert str(apply_error.value) == str(remove_error.value)
        assert snapshot(lb) == before and lb.services() == services
        # missing_ok: the missing key is skipped, the rest applied.
        r = lb.apply(upserts=[svc(3)], removals=[svc(1).key, svc(9).key], missing_ok=True)
        assert r.added == (svc(3).key,) and r.removed == (svc(1).key,)
        assert lb.services() == [svc(2), svc(3)]
        same(lb)


def test_contradictory_or_malformed_batches_are_refused_before_anything_is_written() -> None:
    require_root()
    with Balancer() as lb:
        lb.sync([svc(1), svc(2)])
        before, services = snapshot(lb), lb.services()
        bad: List[Dict[str, object]] = [
            {"upserts": [svc(1, 1), svc(3)], "removals": [svc(1).key]},  # upserted and removed
            {"upserts": [svc(3), svc(3, 1)]},  # listed twice
            {"removals": [svc(1).key, svc(1)]},  # removed twice
            {"upserts": [svc(3), "10.96.7.4:80"]},
            {"upserts": svc(3)},  # one Service, not an iterable of them
            {"removals": [("10.96.7.1", 70000)]},
            {"removals": "10.96.7.1"},
        ]
        for kw in bad:
            with pytest.raises(InvalidValueError):
                lb.apply(**kw)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="upserted and removed"):
            lb.apply(upserts=[svc(2, 1)], removals=[("10.96.7.2", 80)])
        assert snapshot(lb) == before and lb.services() == services
        assert lb.apply().map_writes == 0  # an empty batch is allowed and does nothing


def test_apply_from_many_threads_alongside_other_writers() -> None:
    """Threads apply batches to keys of their own while another upserts and
    removes a service of its own and a reader takes snapshots: no snapshot
    ever shows half a batch, and the end state is the kernel's."""
    require_root()
    threads, rounds = 4, 60
    with Balancer() as lb:
        errors: List[BaseException] = []
        partial: List[str] = []
        done = threading.Event()

        def mine(t: int) -> List[Service]:
            return [Service(f"10.97.{t}.{i}", 80, backends=[Backend(f"10.245.{t}.{i}", 80)]) for i in range(1, 9)]

        def batcher(t: int) -> None:
            try:
                own = mine(t)
                for r in range(rounds):
                    n = 1 + r % 3
                    ups = [s.with_backends([Backend(f"10.245.{t}.{100 + j}", 80) for j in range(n)]) for s in own[:4]]
                    if r % 2 == 0:
                        lb.apply(upserts=ups + own[4:])
                    else:
                        lb.apply(upserts=ups, removals=[s.key for s in own[4:]])
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        def single() -> None:
            try:
                s = Service("10.98.0.1", 53, "udp", [Backend("10.246.0.1", 53)])
                for _ in range(rounds * 2):
                    lb.upsert(s)
                    lb.remove(s.key)
            except BaseException as e:
                errors.append(e)

        def reader() -> None:
            try:
                while not done.is_set():
                    by_key = {s.key: s for s in lb.services()}
                    for t in range(threads):
                        own = mine(t)
                        sizes = {len(by_key[s.key].backends) for s in own[:4] if s.key in by_key}
                        present = {s.key in by_key for s in own[4:]}
                        if len(sizes) > 1 or len(present) > 1:
                            partial.append(f"thread {t}: sizes {sizes}, present {present}")
            except BaseException as e:
                errors.append(e)

        writers = [threading.Thread(target=batcher, args=(t,)) for t in range(threads)]
        writers.append(threading.Thread(target=single))
        watch = threading.Thread(target=reader)
        watch.start()
        for th in writers:
            th.start()
        for th in writers:
            th.join(120)
        done.set()
        watch.join(30)
        assert not errors, errors
        assert not partial, partial[:5]
        # Every thread's last round (odd: removals) is what is programmed.
        assert sorted(s.key for s in lb.services()) == sorted(s.key for t in range(threads) for s in mine(t)[:4])
        same(lb)
        assert orphans(lb) == {"slots": 0, "backends": 0, "maglev": 0, "services": 0}
        assert lb.pending() == 0


def test_the_apply_docstring_example_runs() -> None:
    """The example in Balancer.apply's docstring (skipped by a plain doctest
    run, which may not be root), run as written."""
    import doctest

    require_root()
    text = (Balancer.apply.__doc__ or "").replace("# doctest: +SKIP", "")
    test = doctest.DocTestParser().get_doctest(
        text, {"Balancer": Balancer, "Service": Service, "Backend": Backend}, "apply", None, 0
    )
    assert len(test.examples) == 2  # the services, then the with block
    result = doctest.DocTestRunner().run(test)
    assert result.failed == 0 and result.attempted == len(test.examples)
