"""The writer's commit point: whatever fails after the swap, services() says
what the kernel's tables hold, and the next call converges."""

from __future__ import annotations

import dataclasses
import errno
import time
from typing import Any, Dict, List, Tuple

import pytest
from helpers import UDP_PORT, World, require_root

from socklb import Affinity, Backend, Balancer, KernelError, Service
from socklb.datapath.live import Map


class FailingMap(Map):
    """A map whose bulk deletes and updates fail once (EIO), as if the kernel refused."""

    def __init__(self, inner: Map, op: str, nth: int = 1) -> None:
        super().__init__(inner._owner, inner.name, inner.fd, inner.key_size, inner.value_size)
        self.op = op
        self.failed = 0
        self.calls = 0
        self.nth = nth  # fail the nth non-empty call

    def _fail(self) -> None:
        self.failed += 1
        e = KernelError(f"{self.op} of map {self.name} (injected)", errno.EIO)
        e.done = 0  # type: ignore[attr-defined]
        raise e

    def delete(self, keys: Any) -> None:
        if self.op == "delete" and keys and not self.failed:
            self.calls += 1
            if self.calls == self.nth:
                self._fail()
        super().delete(keys)

    def update(self, keys: bytes, values: bytes, n: int, flags: int = 0) -> None:
        if self.op == "update" and n and not self.failed:
            self.calls += 1
            if self.calls == self.nth:
                self._fail()
        super().update(keys, values, n, flags)


class FailingTerminator:
    def __init__(self, inner: Any) -> None:
        self.inner, self.enabled, self.terminated, self.failed = inner, True, 0, 0

    def __call__(self, ids: List[int], tcp: bool) -> int:
        if not self.failed:
            self.failed += 1
            raise KernelError("terminating sockets (injected)", errno.E2BIG)
        return 0


def before_and_after() -> Tuple[List[Service], List[Service]]:
    b = [Backend(f"10.244.1.{i}", 53) for i in range(1, 5)]
    old = [
        Service("10.96.0.53", 53, "udp", b[:3], algorithm="maglev", affinity=Affinity(60)),
        Service("10.96.0.54", 53, "udp", b[:2]),
        Service("10.96.0.55", 53, "udp", b[:1]),
    ]
    new = [
        Service(
            "10.96.0.53", 53, "udp", [b[0], Backend("10.244.1.2", 53, state="maintenance"), b[3]], algorithm="maglev"
        ),
        Service("10.96.0.54", 53, "udp", b[1:2]),
    ]
    return old, new


def same(lb: Balancer) -> None:
    """services() is exactly what the kernel's tables describe."""
    assert sorted(lb.services(), key=str) == sorted(lb.kernel_services(), key=str)


def orphans(lb: Balancer) -> Dict[str, int]:
    d = lb.dump()
    n_backends = sum(len(s.backends) for s in lb.services())
    return {
        "slots": len(d["slots"]) - n_backends,
        "backends": len(d["backends"]) - n_backends,
        "maglev": len(d["maglev"]) - sum(1 for s in lb.services() if s.algorithm.value == "maglev"),
        "services": len(d["services"]) - len(lb.services()),
    }


STEPS = [
    ("backends", "update"),  # kept backends' new state (the 2nd update: new backends are the 1st)
    ("slots", "delete"),  # old lists
    ("maglev", "delete"),  # old tables
    ("backends", "delete"),  # removed backends
    ("affinity", "purge"),
    ("terminate", "call"),
]


@pytest.mark.parametrize("step", STEPS, ids=["-".join(s) for s in STEPS])
def test_each_post_swap_step_failing_keeps_python_and_kernel_equal(step: Tuple[str, str]) -> None:
    require_root()
    old, new = before_and_after()
    with Balancer(max_maglev_services=4) as lb:
        lb.sync(old)
        same(lb)
        tables = lb._tables
        name, op = step
        if name == "terminate":
            real = lb._terminator
            lb._terminator = FailingTerminator(real)  # type: ignore[assignment]
        elif name == "affinity":
            lb._tables = dataclasses.replace(tables, affinity=Map(None, "affinity", -1, 16, 16))
        else:
            nth = 2 if (name, op) == ("backends", "update") else 1
            lb._tables = dataclasses.replace(tables, **{name: FailingMap(getattr(tables, name), op, nth)})
        res = lb.sync(new)  # committed: no exception for a failed clean-up
        assert res.changed
        assert lb.services() == [lb.get(s.key) for s in new] and len(lb.services()) == 2
        same(lb)
        assert lb.pending() > 0 or (name == "backends" and op == "update")
        # The fault is gone: the next call converges.
        lb._tables = tables
        if name == "terminate":
            lb._terminator = real
        lb.sync(new)
        assert lb.reconcile() == 0 and lb.pending() == 0
        same(lb)
        assert orphans(lb) == {"slots": 0, "backends": 0, "maglev": 0, "services": 0}
        # And a version written after a failed state update is the one the maps hold.
        assert lb.sync(new).map_writes == 0
        lb.sync(old)
        same(lb)
        assert orphans(lb) == {"slots": 0, "backends": 0, "maglev": 0, "services": 0}


def test_a_failed_swap_is_rolled_back() -> None:
    require_root()
    old, new = before_and_after()
    with Balancer(max_maglev_services=4) as lb:
        lb.sync(old)
        tables = lb._tables
        lb._tables = dataclasses.replace(tables, services=FailingMap(tables.services, "update"))
        with pytest.raises(KernelError):
            lb.sync(new)
        lb._tables = tables
        assert sorted(lb.services(), key=str) == sorted(old, key=str)
        same(lb)
        assert orphans(lb) == {"slots": 0, "backends": 0, "maglev": 0, "services": 0}
        lb.sync(new)
        same(lb)


def test_removing_more_backends_than_the_iterator_map_holds(world: World) -> None:
    """sync([]) of two UDP services of 40,000 backends each, with socket
    termination on and a process in the attached cgroup: the doomed ids are
    handed to the iterators in chunks, nothing fails, nothing disagrees."""
    n = 40_000
    services = [
        Service(
            f"10.96.1.{s}",
            UDP_PORT,
            "udp",
            [Backend(f"10.{200 + s}.{i // 250}.{i % 250 + 1}", UDP_PORT) for i in range(n)],
        )
        for s in (1, 2)
    ]
    holder = world.client.popen(["sleep", "60"])
    try:
        with Balancer(max_backends=2 * n, terminate_sockets=True) as lb:
            lb.attach(world.client.cgroup)
            lb.sync(services)
            t0 = time.monotonic()
            res = lb.sync([])
            assert len(res.removed) == 2
            assert lb.services() == [] and lb.kernel_services() == []
            assert lb.dump()["services"] == {} and lb.dump()["backends"] == {}
            assert lb.pending() == 0
            assert time.monotonic() - t0 < 60
    finally:
        holder.kill()
        holder.wait()
