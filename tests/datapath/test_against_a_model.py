"""Model-based tests: random sequences of upsert, remove, sync, attach, detach,
close and reopen (adopting pinned state) against a plain-Python model of the
expected tables, checked after every step against the raw maps, and against
real connects from the lab's client pod."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Tuple, TypedDict

import pytest
from helpers import BACKENDS, TCP_PORT, UDP_PORT, World, refused
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from pinned import by_key, new_pin_dir, probe, read_pinned, remove_pins
from tables import ServiceKey, check_tables, usable

from socklb import (
    Affinity,
    Algorithm,
    Attachment,
    Backend,
    BackendState,
    Balancer,
    CapacityError,
    ClosedError,
    InvalidValueError,
    NotFoundError,
    Service,
)

# A small universe, so that keys collide and limits are reached.
VIPS = ("10.96.0.20", "10.96.0.21", "fd00:96::20")
KEYS: List[ServiceKey] = [(v, p, proto) for v in VIPS for p in (80, 81) for proto in ("tcp", "udp")]
TCP_KEYS = [k for k in KEYS if k[2] == "tcp"]


class Limits(TypedDict):
    """The Balancer's limits a machine runs with."""

    max_services: int
    max_backends: int
    maglev_size: int
    max_maglev_services: int


# Tight limits, reached often (and replacing near them must work); roomy ones, never reached.
TIGHT: Limits = {"max_services": 5, "max_backends": 9, "maglev_size": 251, "max_maglev_services": 2}
ROOMY: Limits = {"max_services": 64, "max_backends": 128, "maglev_size": 251, "max_maglev_services": 16}
UNREACHABLE = {"ENETUNREACH", "EHOSTUNREACH"}


# -- the model -----------------------------------------------------------------


def over_capacity(model: Dict[ServiceKey, Service], limits: Limits) -> bool:
    """Whether the state would exceed a limit (limits are on the state, not on
    how a change gets there)."""
    services = list(model.values())
    return (
        len(services) > limits["max_services"]
        or sum(len(s.backends) for s in services) > limits["max_backends"]
        or sum(s.algorithm is Algorithm.MAGLEV for s in services) > limits["max_maglev_services"]
    )


# -- strategies ------------------------------------------------------------------


def services_strategy(world: World) -> st.SearchStrategy[Service]:
    entry = st.tuples(st.sampled_from(BACKENDS), st.integers(0, 3), st.sampled_from(list(BackendState)))

    @st.composite
    def service(draw: Any) -> Service:
        vip, port, proto = draw(st.sampled_from(KEYS))
        v6 = ":" in vip
        bport = TCP_PORT if proto == "tcp" else UDP_PORT
        entries = draw(st.lists(entry, max_size=3, unique_by=lambda e: e[0]))
        pods = world.backends
        bs = [Backend(pods[n].ipv6 if v6 else pods[n].ipv4, bport, weight=w, state=s) for n, w, s in entries]
        return Service(
            vip,
            port,
            proto,
            bs,
            draw(st.sampled_from(list(Algorithm))),
            draw(st.sampled_from([None, Affinity(30)])),
            draw(st.booleans()),
        )

    return service()


# -- the machine -----------------------------------------------------------------


class BalancerMachine(RuleBasedStateMachine):
    world: World
    pin_dirs: List[str]
    svc_strategy: st.SearchStrategy[Service]
    calls: Counter[str]
    limits: Limits

    def __init__(self) -> None:
        super().__init__()
        self.pd = new_pin_dir()
        self.pin_dirs.append(self.pd)
        self.lb: Optional[Balancer] = Balancer(pin_dir=self.pd, **self.limits)
        self.model: Dict[ServiceKey, Service] = {}
        self.attached = False
        self.att: Optional[Attachment] = None
        # The costly steps are rationed per example, so that most steps change the tables.
        self.budget = {"dial": 5, "reopen": 3, "close": 2, "attach again": 1}
        self.client_cg = os.path.realpath(self.world.client.cgroup)
        self.name_of = {}
        for n, pod in self.world.backends.items():
            self.name_of[pod.ipv4] = self.name_of[pod.ipv6] = n

    # The balancer, open (a precondition of most rules).
    def is_open(self) -> bool:
        return self.lb is not None

    @property
    def bal(self) -> Balancer:
        assert self.lb is not None
        return self.lb

    def snapshot(self) -> Tuple[Any, ...]:
        lb = self.bal
        return (lb.dump(), lb.services(), [(a.cgroup, a.program_ids()) for a in lb.attachments()])

    def expect_refused(self, exc: type, call: Any) -> None:
        before = self.snapshot()
        with pytest.raises(exc):
            call()
        assert self.snapshot() == before, f"a refused call ({exc.__name__}) changed the state"

    # -- rules -------------------------------------------------------------------

    @precondition(is_open)
    @rule(data=st.data())
    def upsert(self, data: Any) -> None:
        self.calls["upsert"] += 1
        svc = data.draw(self.svc_strategy, label="service")
        new = {**self.model, svc.key: svc}
        if over_capacity(new, self.limits):
            self.expect_refused(CapacityError, lambda: self.bal.upsert(svc))
            return
        changed = self.bal.upsert(svc)
        assert changed == (self.model.get(svc.key) != svc)
        self.model = new

    @precondition(is_open)
    @rule(key=st.sampled_from(KEYS))
    def remove(self, key: ServiceKey) -> None:
        self.calls["remove"] += 1
        if key not in self.model:
            self.expect_refused(NotFoundError, lambda: self.bal.remove(key))
            return
        self.bal.remove(key)
        del self.model[key]

    @precondition(is_open)
    @rule(data=st.data())
    def sync(self, data: Any) -> None:
        self.calls["sync"] += 1
        svcs = data.draw(st.lists(self.svc_strategy, max_size=6, unique_by=lambda s: s.key), label="services")
        new = {s.key: s for s in svcs}
        if over_capacity(new, self.limits):
            self.expect_refused(CapacityError, lambda: self.bal.sync(svcs))
            return
        r = self.bal.sync(svcs)
        assert set(r.added) == set(new) - set(self.model)
        assert set(r.removed) == set(self.model) - set(new)
        assert set(r.updated) == {k for k in set(new) & set(self.model) if new[k] != self.model[k]}
        assert r.unchanged == len(new) - len(r.added) - len(r.updated)
        self.model = new

    @precondition(lambda self: self.lb is not None and (not self.attached or self.budget["attach again"] > 0))
    @rule()
    def attach(self) -> None:
        self.calls["attach"] += 1
        if self.attached:
            self.budget["attach again"] -= 1
            self.expect_refused(InvalidValueError, lambda: self.bal.attach(self.world.client.cgroup))
            return
        self.att = self.bal.attach(self.world.client.cgroup)
        self.attached = True

    @precondition(lambda self: self.lb is not None and self.attached)
    @rule()
    def detach(self) -> None:
        self.calls["detach"] += 1
        (att,) = self.bal.attachments()
        att.detach()
        assert not att.attached
        self.attached = False

    @precondition(lambda self: self.lb is not None and self.budget["close"] > 0)
    @rule()
    def close(self) -> None:
        """Closing a pinned balancer releases it; its state keeps working."""
        self.calls["close"] += 1
        self.budget["close"] -= 1
        self.bal.close()
        lb, self.lb = self.lb, None
        assert lb is not None
        with pytest.raises(ClosedError):
            lb.services()

    @precondition(lambda self: self.lb is None or self.budget["reopen"] > 0)
    @rule()
    def reopen(self) -> None:
        """A (new) controller adopts the pinned state."""
        self.calls["reopen"] += 1
        self.budget["reopen"] -= 1
        if self.lb is not None:
            self.lb.close()
        self.lb = Balancer.open(self.pd)
        assert (self.lb.max_services, self.lb.max_backends) == (
            self.limits["max_services"],
            self.limits["max_backends"],
        )
        r = self.lb.sync(list(self.model.values()))
        assert not r.changed and r.map_writes == 0, r

    @precondition(lambda self: self.budget["dial"] > 0)
    @rule(data=st.data())
    def dial(self, data: Any) -> None:
        """Real connects from the client pod, mostly to a programmed service."""
        self.calls["dial"] += 1
        self.budget["dial"] -= 1
        programmed = sorted(k for k in self.model if k[2] == "tcp")
        key = data.draw(
            st.sampled_from(TCP_KEYS) if not programmed else st.sampled_from(programmed) | st.sampled_from(TCP_KEYS),
            label="key",
        )
        vip, port, _ = key
        (res,) = probe(self.world.client, [(vip, port, 4)])
        svc = self.model.get(key)
        if not self.attached or svc is None:
            assert res["served"] == [] and len(res["errors"]) == 4, res
            assert set(res["errors"]) <= UNREACHABLE, res
        elif not usable(svc):
            assert res["errors"] == [refused()] * 4, res
        else:
            names = {self.name_of[b.address] for b in usable(svc)}
            assert res["errors"] == [], (svc, res)
            assert set(res["served"]) <= names, (svc, res)
            assert set(res["peers"]) == {f"{vip}:{port}"}, res

    # -- after every step -------------------------------------------------------

    @invariant()
    def matches_the_model(self) -> None:
        if self.lb is None:
            # Closed: the pinned maps still hold the model.
            tables = {n: read_pinned(self.pd, n) for n in ("services", "slots", "backends")}
            check_tables(tables, self.model, self.limits["maglev_size"])
            return
        lb = self.lb
        assert by_key(lb.services()) == by_key(list(self.model.values()))
        check_tables(lb.dump(), self.model, lb.maglev_size)
        atts = lb.attachments()
        assert [a.cgroup for a in atts] == ([self.client_cg] if self.attached else [])
        assert sorted(os.listdir(os.path.join(self.pd, "links"))) == (
            [str(os.stat(self.client_cg).st_ino)] if self.attached else []
        )

    def teardown(self) -> None:
        try:
            if self.lb is not None:
                self.lb.destroy()
        finally:
            remove_pins(self.pd)


@pytest.fixture(params=["roomy", "tight"])
def machine(world: World, request: Any) -> Iterator[type]:
    pin_dirs: List[str] = []
    BalancerMachine.limits = ROOMY if request.param == "roomy" else TIGHT
    BalancerMachine.world = world
    BalancerMachine.pin_dirs = pin_dirs
    BalancerMachine.svc_strategy = services_strategy(world)
    BalancerMachine.calls = Counter()
    try:
        yield BalancerMachine
    finally:
        for pd in pin_dirs:
            remove_pins(pd)
        assert [pd for pd in pin_dirs if os.path.lexists(pd)] == []


@pytest.mark.slow
def test_balancer_matches_a_model(machine: type) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            database=None,
            # Bounded in time: a failure is reported as found, not shrunk
            # (shrinking would replay many lab sequences).
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        ),
    )
    calls = machine.calls  # type: ignore[attr-defined]
    print(f"\nmodel-based: {sum(calls.values())} steps: {dict(sorted(calls.items()))}")
    # Every kind of step was exercised, real connects included.
    assert set(calls) == {"upsert", "remove", "sync", "attach", "detach", "close", "reopen", "dial"}, calls
    assert calls["dial"] >= 10, calls
