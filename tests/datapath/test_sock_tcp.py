"""TCP translations kept by socket cookie (sock_tcp): freed when the socket is
closed, found by getpeername() across a restart, and a full table degrades to
socket-local storage, counted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Iterator

import pytest
from helpers import TCP_PORT, VIP4, World, dial, in_ci, program, run_program
from pinned import pinned_dir

from socklb import Backend, Balancer, Service
from socklb._native import features, ffi, lib


@pytest.fixture(autouse=True)
def by_cookie() -> None:
    gone = [f.name for f in features.missing() if f.name in ("sock_release", "mptcp_cast")]
    if gone:
        msg = f"this kernel lacks {gone}: TCP records live in socket-local storage"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def pin_dir() -> Iterator[str]:
    with pinned_dir() as pd:
        yield pd


def hold(world: World, n: int) -> subprocess.Popen[str]:
    p: subprocess.Popen[str] = world.client.popen(
        [sys.executable, program("tcp_hold_peers"), VIP4, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    assert json.loads(p.stdout.readline() or "null") == [f"{VIP4}:80"]
    return p


def ask(p: subprocess.Popen[str]) -> object:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline() or "null")


def end(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()


@pytest.mark.slow
def test_a_million_short_lived_sockets_leave_no_record(world: World, balancer: Balancer) -> None:
    # A backend port nobody listens on: each connect() is answered by a reset.
    balancer.upsert(Service(VIP4, 80, "tcp", [Backend(world.backends["b1"].ipv4, 9)]))
    balancer.attach(world.client.cgroup)
    n, budget = 1_000_000, 20.0  # bounded in time: a loaded machine does fewer
    t0 = time.monotonic()
    done = int(run_program(world.client, "tcp_connect_churn", VIP4, str(n), str(budget), timeout=budget + 60))
    elapsed = time.monotonic() - t0
    assert done >= 100_000, f"only {done} sockets in {elapsed:.0f} s"
    print(f"{done} TCP sockets in {elapsed:.1f} s")
    c = balancer.counters()
    assert c["connect"] >= done and c["sock_tcp_full"] + c["no_state"] < done // 100, c
    # close() runs the release program: nothing is left, at once.
    assert balancer.map_usage()["sock_tcp"] == (0, lib.SOCKLB_SOCK_TCP_SLOTS)
    # The count is real: open sockets hold one record each, then free it.
    balancer.upsert(Service(VIP4, 80, "tcp", [Backend(world.backends["b1"].ipv4, TCP_PORT)]))
    p = hold(world, 500)
    try:
        assert balancer.map_usage()["sock_tcp"][0] == 500
        assert balancer.socket_states() == 500
    finally:
        end(p)
    assert balancer.map_usage()["sock_tcp"][0] == 0
    assert balancer.socket_states() == 0


def test_a_full_table_falls_back_to_socket_storage(world: World, balancer: Balancer) -> None:
    """Every slot held (by cookies no socket has): connect() is still
    translated and getpeername() still shows the VIP, from socket-local
    storage; the fallback is counted."""
    balancer.upsert(Service(VIP4, 80, "tcp", [Backend(world.backends["b1"].ipv4, TCP_PORT)]))
    balancer.attach(world.client.cgroup)
    slots = int(lib.SOCKLB_SOCK_TCP_SLOTS)
    size = ffi.sizeof("struct socklb_sock_slot")
    table = balancer._open().map("sock_tcp", 4, size)
    keys = ffi.new("uint32_t[]", list(range(slots)))
    vals = ffi.new("struct socklb_sock_slot[]", slots)
    for i in range(slots):
        vals[i].cookie = (1 << 63) | i  # never a real cookie
    table.update(keys, vals, slots)
    try:
        res = dial(world.client, "tcp", VIP4, 80, 20)
        assert res["errors"] == [] and set(res["peers"]) == {f"{VIP4}:80"}
        c = balancer.counters()
        assert c["connect"] == 20 and c["sock_tcp_full"] == 20 and c["no_state"] == 0, c
    finally:
        table.update(keys, ffi.new("struct socklb_sock_slot[]", slots), slots)
    res = dial(world.client, "tcp", VIP4, 80, 5)
    assert set(res["peers"]) == {f"{VIP4}:80"}
    assert balancer.counters()["sock_tcp_full"] == 20
    assert balancer.map_usage()["sock_tcp"][0] == 0


def test_records_survive_a_restart_and_go_with_their_sockets(world: World, pin_dir: str) -> None:
    lb = Balancer(pin_dir=pin_dir)
    try:
        lb.upsert(Service(VIP4, 80, "tcp", [Backend(world.backends["b1"].ipv4, TCP_PORT)]))
        lb.attach(world.client.cgroup)
        p = hold(world, 50)
        try:
            lb.close()  # the process that made the records is gone; pins stay
            lb = Balancer.open(pin_dir)  # adopts sock_tcp and swaps the programs
            assert lb.map_usage()["sock_tcp"][0] == 50
            assert ask(p) == [f"{VIP4}:80"]  # the new getpeername4 reads the old records
            assert lb.counters()["getpeername"] >= 100
        finally:
            end(p)
        # ... and the new release program frees them.
        assert lb.map_usage()["sock_tcp"][0] == 0
    finally:
        lb.destroy()


def test_sockets_created_before_attaching_are_tracked(world: World, balancer: Balancer) -> None:
    """The release program runs for any socket of the cgroup, so a socket
    made before attach() and connected after is freed like the others."""
    balancer.upsert(Service(VIP4, 80, "tcp", [Backend(world.backends["b2"].ipv4, TCP_PORT)]))
    p = world.client.popen(
        [sys.executable, program("tcp_connect_on_line"), VIP4], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "made"
        balancer.attach(world.client.cgroup)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == f"{VIP4}:80"
        assert balancer.map_usage()["sock_tcp"][0] == 1
    finally:
        end(p)
    assert balancer.map_usage()["sock_tcp"][0] == 0


def test_records_of_sockets_closed_after_detach_are_reclaimed(world: World, balancer: Balancer) -> None:
    """Sockets that close after detach() run no release program: their slots
    are reclaimed by the next attach() or reconcile(), and only theirs."""
    balancer.upsert(Service(VIP4, 80, "tcp", [Backend(world.backends["b1"].ipv4, TCP_PORT)]))
    att = balancer.attach(world.client.cgroup)
    p = hold(world, 50)
    try:
        assert balancer.map_usage()["sock_tcp"][0] == 50
        att.detach()
    finally:
        end(p)  # closed with no release program attached
    assert balancer.map_usage()["sock_tcp"][0] == 50  # held by cookies no socket has
    # Sockets still open keep their records through a reclaim.
    balancer.attach(world.outsider.cgroup)
    q = world.outsider.popen(
        [sys.executable, program("tcp_hold_peers"), VIP4, "20"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert q.stdout is not None
        assert json.loads(q.stdout.readline() or "null") == [f"{VIP4}:80"]
        assert balancer.reconcile() == 0
        assert balancer.map_usage()["sock_tcp"][0] == 20
        assert ask(q) == [f"{VIP4}:80"]  # getpeername still reads their records
    finally:
        end(q)
    assert balancer.map_usage()["sock_tcp"][0] == 0
    # ... and a re-attach reclaims what a detach left, without reconcile().
    att = balancer.attach(world.client.cgroup)
    p = hold(world, 30)
    att.detach()
    end(p)
    assert balancer.map_usage()["sock_tcp"][0] == 30
    balancer.attach(world.client.cgroup)
    assert balancer.map_usage()["sock_tcp"][0] == 0
    assert balancer.socket_states() == 0
