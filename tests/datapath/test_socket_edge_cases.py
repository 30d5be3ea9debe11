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
from helpers import BACKENDS, TCP_PORT, UDP_PORT, VIP4, VIP6, World, dial, in_ci, require_termination

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


def run_json(pod: Any, code: str, *args: str) -> Any:
    return json.loads(pod.python(code, *args, timeout=60))


# --- item 4: a UDP socket's connect record must not outlive the connection ---------

# Modes: "direct" connects to the VIP, then straight to a pod; "sendto-direct" sends
# to the VIP unconnected, then connects straight to a pod; "unspec" connects to
# VIP A, disconnects (AF_UNSPEC) and sends to VIP B with sendto(); "sendto" does
# the same without disconnecting.  Prints what recvfrom() and getpeername() said.
RECONNECT = r"""
import ctypes, json, socket, sys
mode, a, b, pod, pod_port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
fam = socket.AF_INET6 if ":" in a else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(2)
out = {"steps": []}

def step(name, send, peer=True):
    send()
    data, src = s.recvfrom(100)
    p = None
    if peer:
        p = list(s.getpeername()[:2])
    out["steps"].append([name, data.decode().split()[0], list(src[:2]), p])

if mode == "sendto-direct":
    step("vip", lambda: s.sendto(b"peer\n", (a, 53)), peer=False)
    out["steps"][-1][3] = [a, 53]
else:
    s.connect((a, 53))
    step("vip", lambda: s.send(b"peer\n"))
if mode in ("direct", "sendto-direct"):
    s.connect((pod, pod_port))
    step("direct", lambda: s.send(b"peer\n"))
    step("direct", lambda: s.send(b"peer\n"))
else:
    if mode == "unspec":
        libc = ctypes.CDLL(None, use_errno=True)
        unspec = ctypes.create_string_buffer(28)  # sa_family 0 = AF_UNSPEC
        assert libc.connect(s.fileno(), unspec, 28) == 0, ctypes.get_errno()
    for _ in range(3):
        step("other", lambda: s.sendto(b"peer\n", (b, 53)), peer=(mode == "sendto"))
print(json.dumps(out))
"""


@pytest.mark.parametrize("first", ["direct", "sendto-direct"], ids=["after-connect", "after-sendto"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_reconnect_to_a_pod_address_shows_the_pod(world: World, balancer: Balancer, v6: bool, first: str) -> None:
    """connect(VIP) or sendto(VIP), then connect() straight to the pod the VIP chose."""
    a = VIP_A6 if v6 else VIP_A4
    b1 = world.backends["b1"]
    balancer.upsert(udp_svc(world, a, ("b1",)))
    balancer.attach(world.client.cgroup)
    out = run_json(world.client, RECONNECT, first, a, a, addr(b1, v6), str(UDP_PORT))
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
    out = run_json(world.client, RECONNECT, mode, a, b, addr(b1, v6), str(UDP_PORT))
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
SENDTO_THEN_CONNECT = r"""
import json, socket, sys
a, b = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
out = []

def step(send):
    send()
    data, src = s.recvfrom(100)
    out.append([data.decode().split()[0], list(src[:2])])

step(lambda: s.sendto(b"peer\n", (a, 53)))
s.connect((b, 53))
for _ in range(2):
    step(lambda: s.send(b"peer\n"))
out.append(list(s.getpeername()[:2]))
print(json.dumps(out))
"""


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_sendto_then_connect_to_another_vip(world: World, balancer: Balancer, v6: bool) -> None:
    """The flow memory made by sendto() learns of the later connect() record: replies
    from the connected VIP's backend still show that VIP (sock_dgram.had_conn)."""
    a, b = (VIP_A6, VIP_B6) if v6 else (VIP_A4, VIP_B4)
    balancer.upsert(udp_svc(world, a, ("b1",)))
    balancer.upsert(udp_svc(world, b, ("b2",)))
    balancer.attach(world.client.cgroup)
    *steps, peer = run_json(world.client, SENDTO_THEN_CONNECT, a, b)
    assert steps == [["b1", [a, 53]], ["b2", [b, 53]], ["b2", [b, 53]]]
    assert peer == [b, 53]


def test_udp_socket_reused_for_many_connects(world: World, balancer: Balancer) -> None:
    """One socket alternating between two VIPs (different backends) and a pod address."""
    balancer.upsert(udp_svc(world, VIP_A4, ("b1",)))
    balancer.upsert(udp_svc(world, VIP_B4, ("b2",)))
    balancer.attach(world.client.cgroup)
    b3 = world.backends["b3"]
    code = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
out = []
for _ in range(5):
    for host, port in ((sys.argv[1], 53), (sys.argv[2], 53), (sys.argv[3], int(sys.argv[4]))):
        s.connect((host, port))
        s.send(b"peer\n")
        data, src = s.recvfrom(100)
        out.append([host, data.decode().split()[0], src[0], s.getpeername()[0]])
print(json.dumps(out))
"""
    out = run_json(world.client, code, VIP_A4, VIP_B4, b3.ipv4, str(UDP_PORT))
    want = {VIP_A4: "b1", VIP_B4: "b2", b3.ipv4: "b3"}
    assert len(out) == 15
    for host, served, src, peer in out:
        assert (served, src, peer) == (want[host], host, host)


# --- item 6: MPTCP is balanced like TCP ---------------------------------------------

MPTCP_CLIENT = r"""
import json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {"served": [], "peers": [], "protocol": []}
for _ in range(n):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, 262)
    s.settimeout(3)
    s.connect((host, port))
    out["protocol"].append(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
    out["peers"].append(list(s.getpeername()[:2]))
    s.sendall(b"peer\n")
    out["served"].append(s.recv(100).decode().split()[0])
    s.close()
print(json.dumps(out))
"""


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
    out = run_json(world.client, MPTCP_CLIENT, dialled, "80", "30")
    assert set(out["protocol"]) == {262}, "the sockets were not MPTCP"
    assert set(out["served"]) == set(BACKENDS)
    assert {tuple(p) for p in out["peers"]} == {(dialled, 80)}, "getpeername() did not show the VIP"
    c = balancer.counters()
    assert c["connect"] == 30 and c["getpeername"] >= 30


HELD_MPTCP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
s.settimeout(5)
s.connect((sys.argv[1], 80))
print("connected", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"peer\n"); data = s.recv(100)
    print("alive" if data else "eof", flush=True)
except OSError as e:
    print("error", e.errno, flush=True)
"""


def test_mptcp_termination_like_tcp(world: World, balancer: Balancer) -> None:
    require_mptcp(world.client)
    require_termination(balancer)
    b1 = Backend(world.backends["b1"].ipv4, TCP_PORT)
    b2 = Backend(world.backends["b2"].ipv4, TCP_PORT)
    svc = Service(VIP4, 80, "tcp", [b1], terminate_tcp=True)
    balancer.upsert(svc)
    balancer.attach(world.client.cgroup)
    p = world.client.popen(
        [sys.executable, "-c", HELD_MPTCP, VIP4], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
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

HELD = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
print(json.dumps(s.getpeername()[:2]), flush=True)
sys.stdin.readline()
print(json.dumps(s.getpeername()[:2]), flush=True)
"""


def test_after_detach_getpeername_shows_the_backend(world: World, balancer: Balancer) -> None:
    """Documented (README, "After detach()"): nothing answers for the socket any more."""
    b1 = world.backends["b1"]
    balancer.upsert(tcp_svc(world, VIP4, ("b1",)))
    att = balancer.attach(world.client.cgroup)
    p = world.client.popen([sys.executable, "-c", HELD, VIP4], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
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
