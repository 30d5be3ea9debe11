"""Datapath hardening: UDP sockets that reconnect or disconnect, MPTCP, nested and
overlapping attachments, and what detach() leaves.  Real sockets through the real
hooks, in the lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any, Iterator

import pytest
from helpers import (
    BACKENDS,
    TCP_PORT,
    UDP_PORT,
    VIP4,
    VIP6,
    World,
    dial,
    in_ci,
    program,
    require_termination,
    run_program,
)

from socklb import Backend, Balancer, Service
from socklb.datapath.cgroup import make_cgroup, remove_cgroup
from socklb.testing.lab import Sandbox

VIP_A4, VIP_B4 = "10.96.0.71", "10.96.0.72"
VIP_A6, VIP_B6 = "fd00:96::71", "fd00:96::72"
UNREACHABLE = {"ENETUNREACH", "EHOSTUNREACH"}


def addr(pod: Any, v6: bool) -> str:
    return str(pod.ipv6 if v6 else pod.ipv4)


def tcp_svc(world: World, vip: str, names: tuple[str, ...] = BACKENDS, port: int = 80) -> Service:
    v6 = ":" in vip
    return Service(vip, port, "tcp", [Backend(addr(p, v6), TCP_PORT) for p in world.pods(*names)])


def udp_svc(world: World, vip: str, names: tuple[str, ...] = BACKENDS, port: int = 53) -> Service:
    v6 = ":" in vip
    return Service(vip, port, "udp", [Backend(addr(p, v6), UDP_PORT) for p in world.pods(*names)])


def run_json(pod: Any, name: str, *args: str) -> Any:
    """Run the child program ``name`` (tests/programs/) in ``pod``; its JSON output."""
    return json.loads(run_program(pod, name, *args, timeout=60))


# --- item 4: a UDP socket's connect record must not outlive the connection ---------

# Modes: "direct" connects to the VIP, then straight to a pod; "sendto-direct" sends
# to the VIP unconnected, then connects straight to a pod; "unspec" connects to
# VIP A, disconnects (AF_UNSPEC) and sends to VIP B with sendto(); "sendto" does
# the same without disconnecting.  Prints what recvfrom() and getpeername() said.


@pytest.mark.parametrize("first", ["direct", "sendto-direct"], ids=["after-connect", "after-sendto"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_reconnect_to_a_pod_address_shows_the_pod(world: World, balancer: Balancer, v6: bool, first: str) -> None:
    """connect(VIP) or sendto(VIP), then connect() straight to the pod the VIP chose."""
    a = VIP_A6 if v6 else VIP_A4
    b1 = world.backends["b1"]
    balancer.upsert(udp_svc(world, a, ("b1",)))
    balancer.attach(world.client.cgroup)
    out = run_json(world.client, "udp_reconnect", first, a, a, addr(b1, v6), str(UDP_PORT))
    (_, served, src, peer), *direct = out["steps"]
    assert served == "b1" and src == [a, 53] and peer == [a, 53]
    # Connected straight to b1 (the very backend the VIP chose): b1 it is.
    for _, served, src, peer in direct:
        assert served == "b1"
        assert src == [addr(b1, v6), UDP_PORT], "recvfrom() still reported the VIP"
        assert peer == [addr(b1, v6), UDP_PORT], "getpeername() still reported the VIP"


@pytest.mark.parametrize("mode", ["unspec", "sendto"], ids=["after-AF_UNSPEC", "still-connected"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_sendto_another_vip_with_the_same_backend(world: World, balancer: Balancer, v6: bool, mode: str) -> None:
    a, b = (VIP_A6, VIP_B6) if v6 else (VIP_A4, VIP_B4)
    b1 = world.backends["b1"]
    balancer.upsert(udp_svc(world, a, ("b1",)))
    balancer.upsert(udp_svc(world, b, ("b1",)))
    balancer.attach(world.client.cgroup)
    out = run_json(world.client, "udp_reconnect", mode, a, b, addr(b1, v6), str(UDP_PORT))
    (_, served, src, peer), *others = out["steps"]
    assert served == "b1" and src == [a, 53] and peer == [a, 53]
    assert len(others) == 3
    for _, served, src, peer in others:
        assert served == "b1"
        assert src == [b, 53], f"a reply to sendto({b}) was reported from {src}"
        if mode == "sendto":
            assert peer == [a, 53], "the socket is still connected through VIP A"


# sendto() VIP A first (the socket gets its flow memory), then connect() to VIP B
# (another backend): each reply is reported from the VIP it answers.


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_sendto_then_connect_to_another_vip(world: World, balancer: Balancer, v6: bool) -> None:
    """The flow memory made by sendto() learns of the later connect() record: replies
    from the connected VIP's backend still show that VIP (sock_dgram.had_conn)."""
    a, b = (VIP_A6, VIP_B6) if v6 else (VIP_A4, VIP_B4)
    balancer.upsert(udp_svc(world, a, ("b1",)))
    balancer.upsert(udp_svc(world, b, ("b2",)))
    balancer.attach(world.client.cgroup)
    *steps, peer = run_json(world.client, "udp_sendto_then_connect", a, b)
    assert steps == [["b1", [a, 53]], ["b2", [b, 53]], ["b2", [b, 53]]]
    assert peer == [b, 53]


def test_udp_socket_reused_for_many_connects(world: World, balancer: Balancer) -> None:
    """One socket alternating between two VIPs (different backends) and a pod address."""
    balancer.upsert(udp_svc(world, VIP_A4, ("b1",)))
    balancer.upsert(udp_svc(world, VIP_B4, ("b2",)))
    balancer.attach(world.client.cgroup)
    b3 = world.backends["b3"]
    out = run_json(world.client, "udp_connect_rotation", VIP_A4, VIP_B4, b3.ipv4, str(UDP_PORT))
    want = {VIP_A4: "b1", VIP_B4: "b2", b3.ipv4: "b3"}
    assert len(out) == 15
    for host, served, src, peer in out:
        assert (served, src, peer) == (want[host], host, host)


# --- item 6: MPTCP is balanced like TCP ---------------------------------------------


def require_mptcp(pod: Any) -> None:
    r = pod.run(["sysctl", "-n", "net.mptcp.enabled"], check=False)
    if r.returncode != 0 or r.stdout.strip() != "1":
        if in_ci():
            pytest.fail("MPTCP is not enabled in the lab namespace (net.mptcp.enabled)")
        pytest.skip("the kernel has no MPTCP (net.mptcp.enabled)")


@pytest.mark.parametrize(
    ("vip", "dialled"), [(VIP4, VIP4), (VIP6, VIP6), (VIP4, "::ffff:" + VIP4)], ids=["ipv4", "ipv6", "v4-mapped"]
)
def test_mptcp_is_balanced_like_tcp(world: World, balancer: Balancer, vip: str, dialled: str) -> None:
    require_mptcp(world.client)
    balancer.upsert(tcp_svc(world, vip))
    balancer.attach(world.client.cgroup)
    out = run_json(world.client, "mptcp_client", dialled, "80", "30")
    assert set(out["protocol"]) == {262}, "the sockets were not MPTCP"
    assert set(out["served"]) == set(BACKENDS)
    assert {tuple(p) for p in out["peers"]} == {(dialled, 80)}, "getpeername() did not show the VIP"
    c = balancer.counters()
    assert c["connect"] == 30 and c["getpeername"] >= 30


def test_mptcp_termination_like_tcp(world: World, balancer: Balancer) -> None:
    require_mptcp(world.client)
    require_termination(balancer)
    b1 = Backend(world.backends["b1"].ipv4, TCP_PORT)
    b2 = Backend(world.backends["b2"].ipv4, TCP_PORT)
    svc = Service(VIP4, 80, "tcp", [b1], terminate_tcp=True)
    balancer.upsert(svc)
    balancer.attach(world.client.cgroup)
    p = world.client.popen(
        [sys.executable, program("held_tcp"), VIP4, "80", "mptcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout and p.stdin
        assert p.stdout.readline().strip() == "connected"
        balancer.upsert(svc.with_backends([b2]))
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().split()[0] in ("error", "eof")
    finally:
        p.kill()
        p.wait()


# --- item 7: nested and overlapping attachments ---------------------------------------


@pytest.fixture
def inner(world: World) -> Iterator[Sandbox]:
    """A child cgroup of the client pod's, in the client's network namespace."""
    path = make_cgroup(os.path.join(world.client.cgroup, f"inner-{uuid.uuid4().hex[:6]}"))
    try:
        yield Sandbox(world.lab, "client-inner", world.client.netns, path)
    finally:
        remove_cgroup(path)


@pytest.fixture
def other() -> Iterator[Balancer]:
    """A second balancer: its own maps and programs."""
    lb = Balancer()
    try:
        yield lb
    finally:
        lb.close()


def test_child_cgroup_balancer_wins_for_a_shared_vip(
    world: World, inner: Sandbox, balancer: Balancer, other: Balancer
) -> None:
    parent, child = balancer, other
    parent.upsert(tcp_svc(world, VIP4, ("b1",)))
    parent.upsert(udp_svc(world, VIP4, ("b1",)))
    child.upsert(tcp_svc(world, VIP4, ("b2",)))
    child.upsert(udp_svc(world, VIP4, ("b2",)))
    parent.attach(world.client.cgroup)
    child.attach(inner.cgroup)
    res = dial(inner, "tcp", VIP4, 80, 10)
    assert res["errors"] == [] and res["served"] == ["b2"] * 10 and set(res["peers"]) == {f"{VIP4}:80"}
    res = dial(inner, "udp", VIP4, 53, 3, "--sockets", "3")
    assert res["errors"] == [] and res["served"] == ["b2"] * 9 and set(res["peers"]) == {f"{VIP4}:53"}
    res = dial(inner, "udp", VIP4, 53, 3, "--connected")
    assert res["errors"] == [] and res["served"] == ["b2"] * 3 and set(res["peers"]) == {f"{VIP4}:53"}
    assert parent.counters()["connect"] == 0 and parent.counters()["sendmsg"] == 0
    # The parent's own processes still get the parent's balancing.
    res = dial(world.client, "tcp", VIP4, 80, 5)
    assert res["served"] == ["b1"] * 5 and set(res["peers"]) == {f"{VIP4}:80"}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_vip_chain_across_balancers_is_not_followed(
    world: World, inner: Sandbox, balancer: Balancer, other: Balancer, v6: bool
) -> None:
    """The child's service B has the parent's VIP A as its backend: the socket is
    translated once (to A, as B says) and not again by the parent."""
    a, b = (VIP_A6, VIP_B6) if v6 else (VIP_A4, VIP_B4)
    parent, child = balancer, other
    parent.upsert(tcp_svc(world, a, ("b1",)))
    parent.upsert(udp_svc(world, a, ("b1",)))
    child.upsert(Service(b, 80, "tcp", [Backend(a, 80)]))
    child.upsert(Service(b, 53, "udp", [Backend(a, 53)]))
    parent.attach(world.client.cgroup)
    child.attach(inner.cgroup)
    res = dial(inner, "tcp", b, 80, 3)
    assert res["served"] == [] and len(res["errors"]) == 3 and set(res["errors"]) <= UNREACHABLE, res
    res = dial(inner, "udp", b, 53, 1, "--timeout", "1")
    assert res["served"] == [] and set(res["errors"]) <= UNREACHABLE | {"timeout"}, res
    res = dial(inner, "udp", b, 53, 1, "--connected", "--timeout", "1")
    assert res["served"] == [] and set(res["errors"]) <= UNREACHABLE | {"timeout"}, res
    assert parent.counters()["connect"] == 0 and parent.counters()["sendmsg"] == 0
    # VIP A dialled by the child's processes: the child has no such service, the parent translates.
    peer = f"[{a}]:80" if v6 else f"{a}:80"
    res = dial(inner, "tcp", a, 80, 3)
    assert res["served"] == ["b1"] * 3 and set(res["peers"]) == {peer}


def test_one_balancer_at_two_levels_translates_once(world: World, inner: Sandbox, balancer: Balancer) -> None:
    balancer.upsert(tcp_svc(world, VIP4))
    balancer.upsert(udp_svc(world, VIP4))
    balancer.upsert(Service(VIP_B4, 80, "tcp", [Backend(VIP4, 80)]))
    balancer.attach(world.client.cgroup)
    balancer.attach(inner.cgroup)
    res = dial(inner, "tcp", VIP4, 80, 30)
    assert res["errors"] == [] and set(res["served"]) == set(BACKENDS) and set(res["peers"]) == {f"{VIP4}:80"}
    assert balancer.counters()["connect"] == 30, "a socket was translated twice"
    # Connected UDP: the outer program must keep the record the inner one wrote.
    res = dial(inner, "udp", VIP4, 53, 2, "--connected", "--sockets", "10")
    assert res["errors"] == [] and set(res["peers"]) == {f"{VIP4}:53"}
    res = dial(inner, "udp", VIP4, 53, 2, "--sockets", "10")
    assert res["errors"] == [] and set(res["peers"]) == {f"{VIP4}:53"}
    c = balancer.counters()
    assert c["connect"] == 40 and c["sendmsg"] == 20
    # Its own VIP -> VIP chain is not followed either.
    res = dial(inner, "tcp", VIP_B4, 80, 2)
    assert res["served"] == [] and set(res["errors"]) <= UNREACHABLE and len(res["errors"]) == 2


def test_two_balancers_on_one_cgroup(world: World, balancer: Balancer, other: Balancer) -> None:
    first, second = balancer, other
    first.upsert(tcp_svc(world, VIP4, ("b1",)))
    second.upsert(tcp_svc(world, VIP4, ("b2",)))
    # The second one chains B -> VIP4 (the first one's VIP) and has a VIP of its own.
    second.upsert(Service(VIP_B4, 80, "tcp", [Backend(VIP4, 80)]))
    second.upsert(tcp_svc(world, VIP_A4, ("b3",)))
    first.attach(world.client.cgroup)
    second.attach(world.client.cgroup)
    res = dial(world.client, "tcp", VIP4, 80, 10)
    assert res["served"] == ["b1"] * 10 and set(res["peers"]) == {f"{VIP4}:80"}, "the first attached wins"
    res = dial(world.client, "tcp", VIP_A4, 80, 3)
    assert res["served"] == ["b3"] * 3 and set(res["peers"]) == {f"{VIP_A4}:80"}
    assert second.counters()["connect"] == 3
    # B -> VIP4 is translated once, by the second, after the first passed VIP B by.
    res = dial(world.client, "tcp", VIP_B4, 80, 2)
    assert res["served"] == [] and set(res["errors"]) <= UNREACHABLE and len(res["errors"]) == 2
    assert first.counters()["connect"] == 10


def test_chain_on_one_cgroup_not_followed(world: World, balancer: Balancer, other: Balancer) -> None:
    """Attached first, a balancer whose backend is a later one's VIP: not followed."""
    chain, target = balancer, other
    chain.upsert(Service(VIP_B4, 80, "tcp", [Backend(VIP4, 80)]))
    target.upsert(tcp_svc(world, VIP4, ("b1",)))
    chain.attach(world.client.cgroup)
    target.attach(world.client.cgroup)
    res = dial(world.client, "tcp", VIP_B4, 80, 2)
    assert res["served"] == [] and set(res["errors"]) <= UNREACHABLE and len(res["errors"]) == 2
    res = dial(world.client, "tcp", VIP4, 80, 2)
    assert res["served"] == ["b1"] * 2 and set(res["peers"]) == {f"{VIP4}:80"}
    assert target.counters()["connect"] == 2


# --- item 11: after detach() ----------------------------------------------------------


def test_after_detach_getpeername_shows_the_backend(world: World, balancer: Balancer) -> None:
    """Documented (README, "After detach()"): nothing answers for the socket any more."""
    b1 = world.backends["b1"]
    balancer.upsert(tcp_svc(world, VIP4, ("b1",)))
    att = balancer.attach(world.client.cgroup)
    p = world.client.popen(
        [sys.executable, program("tcp_peer_on_line"), VIP4], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout and p.stdin
        assert json.loads(p.stdout.readline()) == [VIP4, 80]
        att.detach()
        p.stdin.write("\n")
        p.stdin.flush()
        assert json.loads(p.stdout.readline()) == [b1.ipv4, TCP_PORT]
    finally:
        p.kill()
        p.wait()
