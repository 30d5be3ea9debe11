"""TCP balancing through the real connect and getpeername hooks, in the lab."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from helpers import BACKENDS, TCP_PORT, VIP4, VIP6, World, dial, program, refused

from socklb import (
    Backend,
    Balancer,
    CapacityError,
    ClosedError,
    InvalidValueError,
    NotCgroupV2Error,
    NotFoundError,
    PermissionDeniedError,
    Service,
)
from socklb.datapath.cgroup import cgroup2_mount


def svc_for(world: World, vip: str = VIP4, names: tuple[str, ...] = BACKENDS, port: int = 80) -> Service:
    v6 = ":" in vip
    return Service(vip, port, "tcp", [Backend(p.ipv6 if v6 else p.ipv4, TCP_PORT) for p in world.pods(*names)])


@pytest.mark.parametrize(
    ("vip", "dialled", "peer"),
    [
        (VIP4, VIP4, f"{VIP4}:80"),
        (VIP6, VIP6, f"[{VIP6}]:80"),
        (VIP4, "::ffff:" + VIP4, f"[::ffff:{VIP4}]:80"),
    ],
    ids=["ipv4", "ipv6", "v4-mapped-ipv6"],
)
def test_every_backend_reached_and_peer_is_vip(
    world: World, balancer: Balancer, vip: str, dialled: str, peer: str
) -> None:
    balancer.upsert(svc_for(world, vip))
    balancer.attach(world.client.cgroup)
    res = dial(world.client, "tcp", dialled, 80, 60)
    assert res["errors"] == []
    assert set(res["served"]) == set(BACKENDS)
    assert set(res["peers"]) == {peer}
    # The backend saw the client's own pod address: no NAT on the way.
    own = world.client.ipv6 if ":" in vip else world.client.ipv4
    assert {s.split()[0] for s in res["seen_as"]} == {own}
    c = balancer.counters()
    assert c["connect"] >= 60 and c["getpeername"] >= 60


def test_non_service_destinations_untouched(world: World, balancer: Balancer) -> None:
    balancer.upsert(svc_for(world))
    balancer.attach(world.client.cgroup)
    b1 = world.backends["b1"]
    # Dialling a backend directly reaches that backend and shows its address.
    res = dial(world.client, "tcp", b1.ipv4, TCP_PORT, 5)
    assert res["served"] == ["b1"] * 5 and set(res["peers"]) == {f"{b1.ipv4}:{TCP_PORT}"}
    res = dial(world.client, "tcp", b1.ipv6, TCP_PORT, 3)
    assert res["served"] == ["b1"] * 3
    # Same VIP, another port: not a service, so the unreachable route answers.
    res = dial(world.client, "tcp", VIP4, 81, 2)
    assert res["served"] == [] and set(res["errors"]) <= {"ENETUNREACH", "EHOSTUNREACH"}
    assert len(res["errors"]) == 2
    assert balancer.counters()["connect"] == 0


def test_sockets_outside_the_cgroup_untouched(world: World, balancer: Balancer) -> None:
    balancer.upsert(svc_for(world))
    balancer.attach(world.client.cgroup)
    res = dial(world.outsider, "tcp", VIP4, 80, 3)
    assert res["served"] == [] and len(res["errors"]) == 3
    assert set(res["errors"]) <= {"ENETUNREACH", "EHOSTUNREACH"}


def test_detach_restores_direct_behaviour(world: World, balancer: Balancer) -> None:
    balancer.upsert(svc_for(world))
    att = balancer.attach(world.client.cgroup)
    assert dial(world.client, "tcp", VIP4, 80, 3)["errors"] == []
    att.detach()
    assert not att.attached and balancer.attachments() == []
    res = dial(world.client, "tcp", VIP4, 80, 3)
    assert res["served"] == [] and set(res["errors"]) <= {"ENETUNREACH", "EHOSTUNREACH"}
    att.detach()  # idempotent
    # Direct traffic was never affected.
    assert dial(world.client, "tcp", world.backends["b2"].ipv4, TCP_PORT, 2)["served"] == ["b2", "b2"]


def test_several_attachments_are_independent(world: World, balancer: Balancer) -> None:
    balancer.upsert(svc_for(world))
    a_client = balancer.attach(world.client.cgroup)
    a_out = balancer.attach(world.outsider.cgroup)
    assert len(balancer.attachments()) == 2
    assert dial(world.outsider, "tcp", VIP4, 80, 3)["errors"] == []
    a_client.detach()
    assert dial(world.outsider, "tcp", VIP4, 80, 3)["errors"] == []
    assert len(dial(world.client, "tcp", VIP4, 80, 2)["errors"]) == 2
    assert balancer.attachments() == [a_out]


def test_replacing_backends_applies_to_new_connections(world: World, balancer: Balancer) -> None:
    balancer.upsert(svc_for(world))
    balancer.attach(world.client.cgroup)
    assert set(dial(world.client, "tcp", VIP4, 80, 40)["served"]) == set(BACKENDS)
    assert balancer.upsert(svc_for(world, names=("b2",))) is True
    assert dial(world.client, "tcp", VIP4, 80, 20)["served"] == ["b2"] * 20
    assert balancer.upsert(svc_for(world, names=("b2",))) is False  # nothing to change
    balancer.upsert(svc_for(world, names=("b1", "b3")))
    assert set(dial(world.client, "tcp", VIP4, 80, 30)["served"]) == {"b1", "b3"}
    # Stale backend entries were removed, not left behind.
    assert len(balancer.dump()["backends"]) == 2


def test_service_without_backends_refuses(world: World, balancer: Balancer) -> None:
    balancer.upsert(Service(VIP4, 80, "tcp", []))
    balancer.upsert(Service(VIP6, 80, "tcp", []))
    balancer.attach(world.client.cgroup)
    assert dial(world.client, "tcp", VIP4, 80, 2)["errors"] == [refused()] * 2
    assert dial(world.client, "tcp", VIP6, 80, 2)["errors"] == [refused()] * 2
    assert balancer.counters()["no_backend"] == 4


def test_remove_service(world: World, balancer: Balancer) -> None:
    svc = svc_for(world)
    balancer.upsert(svc)
    balancer.upsert(svc_for(world, VIP6))
    balancer.attach(world.client.cgroup)
    balancer.remove((VIP4, 80, "tcp"))
    assert balancer.services() == [svc_for(world, VIP6)]
    assert len(dial(world.client, "tcp", VIP4, 80, 2)["errors"]) == 2
    balancer.remove(svc_for(world, VIP6))
    assert balancer.dump() == {"services": {}, "slots": {}, "backends": {}, "maglev": {}}


def test_close_detaches_everything(world: World) -> None:
    lb = Balancer()
    lb.upsert(svc_for(world))
    a = lb.attach(world.client.cgroup)
    assert dial(world.client, "tcp", VIP4, 80, 2)["errors"] == []
    lb.close()
    assert not a.attached and lb.closed
    assert len(dial(world.client, "tcp", VIP4, 80, 2)["errors"]) == 2
    with pytest.raises(ClosedError):
        lb.upsert(svc_for(world))
    with pytest.raises(ClosedError):
        lb.services()
    lb.close()  # idempotent


def test_two_balancers_on_one_cgroup(world: World) -> None:
    with Balancer() as one, Balancer() as two:
        one.upsert(svc_for(world, names=("b1",)))
        two.upsert(svc_for(world, VIP6, names=("b3",)))
        one.attach(world.client.cgroup)
        two.attach(world.client.cgroup)
        assert dial(world.client, "tcp", VIP4, 80, 5)["served"] == ["b1"] * 5
        assert dial(world.client, "tcp", VIP6, 80, 5)["served"] == ["b3"] * 5


# --- bad input changes nothing --------------------------------------------------


def snapshot(lb: Balancer) -> tuple[Any, ...]:
    return (lb.services(), lb.dump(), len(lb.attachments()))


def test_bad_input_changes_nothing(world: World, balancer: Balancer, tmp_path: Any) -> None:
    balancer.upsert(svc_for(world))
    balancer.attach(world.client.cgroup)
    before = snapshot(balancer)
    with pytest.raises(InvalidValueError) as e:
        balancer.upsert(("10.96.0.10", 80))  # type: ignore[arg-type]
    assert e.value.field == "service"
    with pytest.raises(NotFoundError):
        balancer.remove(("10.96.0.99", 80, "tcp"))
    with pytest.raises(InvalidValueError):
        balancer.remove(("10.96.0.999", 80, "tcp"))
    with pytest.raises(InvalidValueError) as e:
        balancer.sync([svc_for(world), svc_for(world)])
    assert e.value.field == "services[1]"
    with pytest.raises(InvalidValueError):
        balancer.sync([svc_for(world), "nope"])  # type: ignore[list-item]
    with pytest.raises(NotCgroupV2Error) as ce:
        balancer.attach(str(tmp_path))
    assert "cgroup v2" in str(ce.value)
    with pytest.raises(NotCgroupV2Error) as ce:
        balancer.attach("/nonexistent/cgroup")
    assert "does not exist" in str(ce.value)
    v1 = [line.split()[4] for line in open("/proc/self/mountinfo") if " - cgroup " in line]
    if v1:
        with pytest.raises(NotCgroupV2Error) as ce:
            balancer.attach(v1[0])
        assert "v1" in str(ce.value)
    assert snapshot(balancer) == before
    assert set(dial(world.client, "tcp", VIP4, 80, 30)["served"]) == set(BACKENDS)


def test_capacity_is_checked_before_writing(world: World) -> None:
    with Balancer(max_services=2, max_backends=4) as lb:
        lb.upsert(svc_for(world, names=("b1", "b2")))
        lb.upsert(svc_for(world, VIP6, names=("b1",)))
        before = snapshot(lb)
        with pytest.raises(CapacityError) as e:
            lb.upsert(svc_for(world, "10.96.0.11"))
        assert e.value.what == "services" and e.value.limit == 2
        with pytest.raises(CapacityError) as e:
            lb.upsert(svc_for(world, VIP6, names=("b1", "b2", "b3")))
        assert e.value.what == "backends" and e.value.needed == 5
        with pytest.raises(CapacityError):
            lb.sync([svc_for(world), svc_for(world, VIP6), svc_for(world, "10.96.0.12", names=())])
        assert snapshot(lb) == before
        # Replacing within the limit works.
        lb.upsert(svc_for(world, VIP6, names=("b1", "b2")))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_services": 0}, "max_services"),
        ({"maglev_size": 1000}, "maglev_size"),
        ({"max_backends": -1}, "max_backends"),
    ],
)
def test_bad_balancer_limits(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidValueError) as e:
        Balancer(**kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_unprivileged_caller_is_told_what_is_needed() -> None:
    if os.geteuid() != 0:
        with pytest.raises(PermissionDeniedError):
            Balancer()
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run(
        [sys.executable, program("unprivileged_balancer")], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "denied:" in r.stdout and "CAP_BPF" in r.stdout and "root" in r.stdout


def test_attach_refuses_what_is_not_cgroup2(balancer: Balancer) -> None:
    with pytest.raises(NotCgroupV2Error) as e:
        balancer.attach("/proc")
    assert e.value.mount == cgroup2_mount()
