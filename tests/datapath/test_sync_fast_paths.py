"""The lean control plane (issue 14, part 3): values with __slots__, the balancer's
bookkeeping per service, and sync()'s fast paths giving exactly the general path's
answers (changes, removals, duplicates, wrong types, reorders, dirty services)."""

from __future__ import annotations

import gc
import tracemalloc
from typing import List, Tuple

import pytest
from helpers import require_root

from socklb import Backend, Balancer, CapacityError, InvalidValueError, Service, SyncResult
from socklb.model import ServiceKey

N = 2000  # above the fast path's threshold (1024)


def services(n: int = N, port: int = 8080) -> List[Service]:
    return [
        Service(f"10.96.{i >> 8}.{i & 255}", 80, backends=[Backend(f"10.244.{j}.{i & 255}", port) for j in range(3)])
        for i in range(1, n + 1)
    ]


def test_bookkeeping_per_service_is_under_1_kib() -> None:
    require_root()
    svcs = services()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with Balancer(max_services=4096, max_backends=16384) as lb:
            lb.sync(svcs)
            gc.collect()
            kept = (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        tracemalloc.stop()
    assert kept < 1024, f"{kept:.0f} bytes per service"


def test_sync_fast_paths_agree_with_the_general_one() -> None:
    require_root()
    svcs = services()
    with Balancer(max_services=4096, max_backends=16384) as lb:
        assert len(lb.sync(svcs).added) == N
        r = lb.sync(svcs)
        assert (r.unchanged, r.map_writes, r.changed) == (N, 0, False)
        # A copy of the same values, not the same objects: nothing to write either.
        r = lb.sync(services())
        assert (r.unchanged, r.map_writes) == (N, 0)
        # One replaced in place.
        changed = list(svcs)
        changed[7] = svcs[7].with_backends([Backend("10.245.0.1", 9)])
        r = lb.sync(changed)
        assert r.updated == (svcs[7].key,) and r.unchanged == N - 1 and not r.added and not r.removed
        assert lb.get(svcs[7].key) is changed[7]
        # The last one removed, a new one appended.
        extra = Service("10.97.0.1", 80, backends=[Backend("10.246.0.1", 80)])
        r = lb.sync([*changed[:-1], extra])
        assert r.removed == (svcs[-1].key,) and r.added == (extra.key,) and r.unchanged == N - 1
        # Reordered: nothing changes.
        now = lb.services()
        r = lb.sync(list(reversed(now)))
        assert (r.unchanged, r.map_writes) == (N, 0)
        # Invalid lists are refused with the general path's errors, and change nothing.
        dup = list(now)
        dup[5] = now[9]
        with pytest.raises(InvalidValueError, match=r"services\[9\]: service .* is listed twice"):
            lb.sync(dup)
        bad = list(now)
        bad[3] = "10.96.0.9:80"  # type: ignore[call-overload]
        with pytest.raises(InvalidValueError, match=r"services\[3\]: must be a Service, not str"):
            lb.sync(bad)
        assert lb.services() == now
        assert sorted(lb.kernel_services(), key=str) == sorted(now, key=str)
        # A dirty service (its maps may disagree) is rewritten by a sync that passes it unchanged.
        lb._state.services[now[11].key].dirty = True
        lb._state.dirty_hint = True
        r = lb.sync(now)
        assert r.updated == (now[11].key,) and r.map_writes > 0
        assert not lb._state.has_dirty()


def _result(r: SyncResult) -> Tuple[List[ServiceKey], List[ServiceKey], List[ServiceKey], int]:
    return (sorted(r.added), sorted(r.updated), sorted(r.removed), r.unchanged)


def test_a_sync_in_batches_ends_where_one_write_does_and_holds_less_at_once() -> None:
    require_root()
    first = services(4000)
    with Balancer(max_services=8192, max_backends=32768) as lb, Balancer(max_services=8192, max_backends=32768) as ref:
        gc.collect()
        tracemalloc.start()
        try:
            extra = []
            for balancer, batch in ((ref, None), (lb, 256)):
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                r = balancer.sync(first, batch=batch)
                left, peak = tracemalloc.get_traced_memory()
                extra.append(peak - left)  # what the write held on top of what it leaves
                assert len(r.added) == 4000 and left > before
        finally:
            tracemalloc.stop()
        assert extra[1] < extra[0] / 2, f"a batched sync held {extra[1]} bytes at once, one write {extra[0]}"
        # Removals, shrinking and growing updates, new services and unchanged ones, in batches of 100.
        changed = [s for i, s in enumerate(first) if i % 7]  # every 7th removed
        for i in range(0, len(changed), 5):
            s = changed[i]
            more = [Backend(f"10.250.{j}.{i % 250}", 9000 + i // 250) for j in range(1 + i % 4)]
            changed[i] = s.with_backends(s.backends[:1] if i % 2 else (*s.backends, *more))
        changed += [Service(f"10.97.{i >> 8}.{i & 255}", 80, backends=[Backend("10.251.0.1", 80)]) for i in range(300)]
        assert _result(lb.sync(changed, batch=100)) == _result(ref.sync(changed))
        assert sorted(lb.kernel_services(), key=str) == sorted(ref.kernel_services(), key=str)
        assert sorted(map(str, lb.services())) == sorted(map(str, changed))
        # Nothing left to do: no write, every service unchanged.
        r = lb.sync(changed, batch=100)
        assert (r.map_writes, r.unchanged) == (0, len(changed))
        # The end state is checked before anything is written.
        now = lb.services()
        too_many = changed + [Service(f"10.98.{i >> 8}.{i & 255}", 80) for i in range(8192)]
        with pytest.raises(CapacityError):
            lb.sync(too_many, batch=100)
        assert lb.services() == now
        for bad in (0, -1, 1.5, True):
            with pytest.raises(InvalidValueError, match="batch"):
                lb.sync(changed, batch=bad)  # type: ignore[arg-type]
