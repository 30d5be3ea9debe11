"""Defects found by adversarial use of the control plane, kept fixed."""

from __future__ import annotations

import gc
import os
import pathlib
import subprocess
import sys
import warnings

import pytest
from helpers import TCP_PORT, VIP4, World, dial, program, require_root

from socklb import Backend, Balancer, CapacityError, ClosedError, InvalidValueError, Service, SocklbError

UNREACHABLE = {"ENETUNREACH", "EHOSTUNREACH"}


def svc_for(world: World) -> Service:
    return Service(VIP4, 80, backends=[Backend(p.ipv4, TCP_PORT) for p in world.pods("b1", "b2")])


def test_program_ids_while_another_thread_detaches_never_crashes(world: World) -> None:
    """Item 1: a concurrent detach/close makes calls raise ClosedError, never SIGSEGV."""
    require_root()
    r = subprocess.run(
        [sys.executable, program("attach_hammer"), world.client.cgroup], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "bad [] 0" in r.stdout


def test_attach_normalises_bytes_and_pathlike(world: World, balancer: Balancer) -> None:
    """Item 3: bytes and os.PathLike paths become one canonical str path."""
    att = balancer.attach(os.fsencode(world.client.cgroup))
    assert isinstance(att.cgroup, str) and att.cgroup == os.path.realpath(world.client.cgroup)
    for again in (world.client.cgroup, pathlib.Path(world.client.cgroup), os.fsencode(world.client.cgroup)):
        with pytest.raises(InvalidValueError, match="already attached"):
            balancer.attach(again)
    with pytest.raises(InvalidValueError):
        balancer.attach(None)  # type: ignore[arg-type]
    assert balancer.attachments() == [att]


def test_a_forked_child_cannot_change_the_parents_tables(world: World) -> None:
    """Item 5: mutating calls from a forked child raise SocklbError; reads work;
    the child's exit leaves the parent's tables and attachment alone."""
    require_root()
    with Balancer() as lb:
        lb.upsert(svc_for(world))
        att = lb.attach(world.client.cgroup)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(r)
            out = []
            try:
                out.append(str(len(lb.services())))
                for call in (
                    lambda: lb.upsert(Service("10.96.0.99", 80)),
                    lambda: lb.remove((VIP4, 80)),
                    lambda: lb.sync([]),
                    lambda: att.detach(),
                    lambda: lb.destroy(),
                ):
                    try:
                        call()
                        out.append("allowed")
                    except SocklbError as e:
                        out.append("refused" if "forked child" in str(e) else repr(e))
                lb.close()  # lets go of the child's copies only
                out.append("closed")
            except BaseException as e:
                out.append(repr(e))
            os.write(w, ",".join(out).encode())
            os._exit(0)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        got = os.read(r, 4096).decode().split(",")
        os.close(r)
        assert status == 0
        assert got == ["1", "refused", "refused", "refused", "refused", "refused", "closed"], got
        assert lb.services() == [svc_for(world)] and lb.kernel_services() == [svc_for(world)]
        assert att.attached
        assert set(dial(world.client, "tcp", VIP4, 80, 6)["served"]) <= {"b1", "b2"}


def test_a_dropped_attached_balancer_warns_and_detaches_at_once(world: World) -> None:
    """Item 8: no reference cycle: the last reference going detaches, with a ResourceWarning."""
    require_root()
    lb = Balancer()
    lb.upsert(svc_for(world))
    att = lb.attach(world.client.cgroup)
    assert dial(world.client, "tcp", VIP4, 80, 2)["errors"] == []
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del lb, att
        assert any(issubclass(w.category, ResourceWarning) for w in caught), [str(w.message) for w in caught]
        res = dial(world.client, "tcp", VIP4, 80, 2)  # before any cycle collection could run
        assert res["served"] == [] and set(res["errors"]) <= UNREACHABLE
    finally:
        gc.enable()


def test_a_held_attachment_keeps_its_balancer(world: World) -> None:
    require_root()
    lb = Balancer()
    lb.upsert(svc_for(world))
    att = lb.attach(world.client.cgroup)
    del lb
    gc.collect()
    assert att.attached and dial(world.client, "tcp", VIP4, 80, 2)["errors"] == []
    att.detach()
    owner = att._owner
    assert isinstance(owner, Balancer)
    owner.close()


def test_maglev_service_larger_than_the_table_is_refused(balancer: Balancer) -> None:
    """Item 9: Balancer(maglev_size=13) cannot choose 20 backends."""
    with Balancer(maglev_size=13) as lb:
        big = Service(VIP4, 80, backends=[Backend(f"10.244.0.{i}", 80) for i in range(1, 21)], algorithm="maglev")
        with pytest.raises(CapacityError):
            lb.upsert(big)
        assert lb.services() == [] and lb.dump()["backends"] == {}


def test_balancer_arguments_follow_python_conventions() -> None:
    """Item 10: InvalidValueError, not TypeError; strict flags; any integer type."""
    require_root()
    with pytest.raises(InvalidValueError):
        Balancer(terminate_sockets=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError):
        Balancer(terminate_sockets="yes")
    with pytest.raises(InvalidValueError, match="pin_dir"):
        Balancer(adopt_only=True)
    with pytest.raises(InvalidValueError):
        Balancer(pin_dir=42)  # type: ignore[arg-type]

    class Idx:
        def __index__(self) -> int:
            return 100

    with Balancer(max_services=Idx(), max_backends=Idx()) as lb:  # type: ignore[arg-type]
        assert lb.max_services == 100 and type(lb.max_services) is int
        with pytest.raises(InvalidValueError):
            lb.sync(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError):
            lb.attach(None)  # type: ignore[arg-type]
    closed = Balancer()
    closed.close()
    with pytest.raises(ClosedError):
        closed.services()
