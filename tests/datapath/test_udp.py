"""UDP balancing: sendmsg/recvmsg translation, connected UDP, per-socket state,
and sockets stuck on removed backends.  Real clients (dig, asyncio) and real
servers (dnsmasq) in the lab."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Iterator

import pytest
from helpers import (
    BACKENDS,
    UDP_PORT,
    VIP4,
    VIP6,
    World,
    dial,
    in_ci,
    program,
    read_events,
    require_termination,
    run_program,
    udp_svc,
)

from socklb import Backend, Balancer, Service

DNS_VIP4 = "10.96.0.53"
DNS_VIP6 = "fd00:96::35"


def bracket(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.mark.parametrize(
    ("vip", "dialled"),
    [(VIP4, VIP4), (VIP6, VIP6), (VIP4, "::ffff:" + VIP4)],
    ids=["ipv4", "ipv6", "v4-mapped-ipv6"],
)
def test_unconnected_udp_replies_come_from_the_vip(world: World, balancer: Balancer, vip: str, dialled: str) -> None:
    balancer.upsert(udp_svc(world, vip))
    balancer.attach(world.client.cgroup)
    res = dial(world.client, "udp", dialled, 53, 5, "--sockets", "30")
    assert res["errors"] == []
    assert set(res["peers"]) == {bracket(dialled, 53)}, "a reply was seen from a backend address"
    assert set(res["served"]) == set(BACKENDS)
    # Each socket keeps its backend across datagrams: no per-datagram hopping.
    per_socket = [res["served"][i : i + 5] for i in range(0, 150, 5)]
    assert all(len(set(s)) == 1 for s in per_socket), per_socket
    c = balancer.counters()
    assert c["sendmsg"] == 150 and c["recvmsg"] >= 150 and c["sticky_hit"] == 120


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_connected_udp(world: World, balancer: Balancer, vip: str) -> None:
    balancer.upsert(udp_svc(world, vip))
    balancer.attach(world.client.cgroup)
    res = dial(world.client, "udp", vip, 53, 3, "--connected", "--sockets", "30")
    assert res["errors"] == []
    assert set(res["peers"]) == {bracket(vip, 53)}  # getpeername() gives the VIP
    assert set(res["served"]) == set(BACKENDS)


def test_non_service_udp_untouched(world: World, balancer: Balancer) -> None:
    balancer.upsert(udp_svc(world))
    balancer.attach(world.client.cgroup)
    b2 = world.backends["b2"]
    res = dial(world.client, "udp", b2.ipv4, UDP_PORT, 3)
    assert res["served"] == ["b2"] * 3 and set(res["peers"]) == {f"{b2.ipv4}:{UDP_PORT}"}
    res = dial(world.client, "udp", VIP4, 54, 1, "--timeout", "1")
    assert res["served"] == [] and res["errors"] in (["ENETUNREACH"], ["EHOSTUNREACH"])
    assert balancer.counters()["sendmsg"] == 0


def test_one_socket_several_services_and_backend_changes(world: World, balancer: Balancer) -> None:
    vips = ["10.96.0.61", "10.96.0.62", "10.96.0.63"]
    for v, b in zip(vips, BACKENDS):
        balancer.upsert(udp_svc(world, v, (b,)))
    balancer.attach(world.client.cgroup)
    p = world.client.popen(
        [sys.executable, program("udp_multi"), *vips], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdin and p.stdout
        p.stdin.write("3\n")
        p.stdin.flush()
        first = json.loads(p.stdout.readline())
        assert [(v, src, port, name) for v, src, port, name in first] == [(v, v, 53, b) for v, b in zip(vips, BACKENDS)]
        # Move the first service to another backend: the same socket follows
        # it and its replies still show the VIP.
        balancer.upsert(udp_svc(world, vips[0], ("b3",)))
        p.stdin.write("\n")
        p.stdin.flush()
        second = json.loads(p.stdout.readline())
        assert second[0] == [vips[0], vips[0], 53, "b3"]
        assert [r[3] for r in second[1:]] == ["b2", "b3"]
        assert all(r[0] == r[1] for r in second)
    finally:
        p.kill()
        p.wait()


def test_a_flow_leaves_a_backend_whose_state_changes(world: World, balancer: Balancer) -> None:
    """A socket's flow keeps its backend while the service keeps its version, and
    leaves it when the backend stops being chosen (here: maintenance, which keeps
    it in the tables); a new version that keeps the backend usable keeps the flow."""
    vip = "10.96.0.64"
    pods = world.pods("b1", "b2")

    def svc(states: dict[str, str], weights: dict[str, int]) -> Service:
        return Service(
            vip,
            53,
            "udp",
            [
                Backend(p.ipv4, UDP_PORT, state=states.get(n, "active"), weight=weights.get(n, 1))
                for n, p in zip(("b1", "b2"), pods)
            ],
        )

    balancer.upsert(svc({}, {}))
    balancer.attach(world.client.cgroup)
    p = world.client.popen(
        [sys.executable, program("udp_multi"), vip, vip, vip], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )

    def step() -> list[Any]:
        assert p.stdin and p.stdout
        p.stdin.write("\n")
        p.stdin.flush()
        got: list[Any] = json.loads(p.stdout.readline())
        assert [(v, src, port) for v, src, port, _ in got] == [(vip, vip, 53)] * 3, got
        return [name for *_, name in got]

    try:
        assert p.stdin
        p.stdin.write("5\n")  # rounds of three datagrams
        p.stdin.flush()
        assert p.stdout
        first = json.loads(p.stdout.readline())
        names = {name for *_, name in first}
        assert len(names) == 1, first
        (x,) = names
        other = "b2" if x == "b1" else "b1"
        balancer.upsert(svc({x: "maintenance"}, {}))
        assert step() == [other] * 3
        balancer.upsert(svc({}, {}))  # x is back: the flow stays where it is
        assert step() == [other] * 3
        balancer.upsert(svc({}, {other: 3}))  # a new version, other still usable
        assert step() == [other] * 3
        assert step() == [other] * 3
    finally:
        p.kill()
        p.wait()


# --- real DNS: dnsmasq behind a UDP VIP, dig and asyncio clients ---------------------


@pytest.fixture(scope="module")
def dns(world: World) -> Iterator[World]:
    if not shutil.which("dnsmasq") or not shutil.which("dig"):
        if in_ci():
            pytest.fail("dnsmasq and dig are needed (./run installs dnsmasq-base and dnsutils)")
        pytest.skip("dnsmasq or dig missing")
    procs = []
    for name, pod in world.backends.items():
        argv = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--user=root",
            "--port=53",
            "--bind-interfaces",
            f"--listen-address={pod.ipv4}",
            f"--listen-address={pod.ipv6}",
            f"--txt-record=whoami.lab,{name}",
            f"--address=/svc.lab/{pod.ipv4}",
        ]
        procs.append(pod.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(0.5)
    for p in procs:
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
    yield world
    for p in procs:
        p.terminate()
        p.wait(5)


def dns_svc(world: World, vip: str) -> Service:
    v6 = ":" in vip
    return Service(vip, 53, "udp", [Backend(p.ipv6 if v6 else p.ipv4, 53) for p in world.pods(*BACKENDS)])


@pytest.mark.parametrize("vip", [DNS_VIP4, DNS_VIP6], ids=["ipv4", "ipv6"])
def test_dig_through_the_vip(dns: World, balancer: Balancer, vip: str) -> None:
    balancer.upsert(dns_svc(dns, vip))
    balancer.attach(dns.client.cgroup)
    answers: Counter[str] = Counter()
    for _ in range(30):
        # dig drops a reply whose source is not the server it asked: every
        # answer here proves recvmsg showed the VIP.
        r = dns.client.run(["dig", "+short", "+tries=1", "+time=2", f"@{vip}", "whoami.lab", "TXT"], timeout=30)
        answers[r.stdout.strip().strip('"')] += 1
    assert set(answers) == set(BACKENDS), answers
    r = dns.client.run(["dig", "+tries=1", "+time=2", f"@{vip}", "svc.lab", "A"], timeout=30)
    assert "status: NOERROR" in r.stdout and f"SERVER: {vip}#53" in r.stdout


def test_asyncio_datagram_client(dns: World, balancer: Balancer) -> None:
    balancer.upsert(dns_svc(dns, DNS_VIP4))
    balancer.attach(dns.client.cgroup)
    out = json.loads(run_program(dns.client, "udp_asyncio_dns", DNS_VIP4))
    assert all(addr == DNS_VIP4 and port == 53 and ok for addr, port, _txt, ok in out), out
    assert {txt for *_, txt, _ in out} <= set(BACKENDS)


# --- sockets stuck on a removed backend -----------------------------------------------


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["ipv4", "ipv6"])
def test_connected_udp_client_moves_off_a_removed_backend(world: World, balancer: Balancer, vip: str) -> None:
    require_termination(balancer)
    svc = udp_svc(world, vip)
    balancer.upsert(svc)
    balancer.attach(world.client.cgroup)
    p = world.client.popen([sys.executable, program("udp_stream"), vip, "53"], stdout=subprocess.PIPE, text=True)
    try:
        before = read_events(p, lambda ev: len(ev) >= 5)
        first = before[0]["served"]
        assert all(e.get("served") == first for e in before), before
        balancer.upsert(svc.with_backends([b for b, n in zip(svc.backends, BACKENDS) if n != first]))
        assert balancer.counters()["terminated"] >= 1
        after = read_events(p, lambda ev: sum(1 for e in ev if e.get("served") not in (None, first)) >= 5)
    finally:
        p.kill()
        p.wait()
    errors = [e["error"] for e in after if "error" in e]
    # The kernel disconnects the socket and sets ECONNABORTED: a blocked recv()
    # returns that, a send() on the now unconnected socket EDESTADDRREQ.
    assert errors and errors[0] in ("ECONNABORTED", "EDESTADDRREQ"), after[:5]
    moved = [e for e in after if "served" in e and e["served"] != first]
    assert len(moved) >= 5
    # Nothing arrived from the removed backend after the error, and every
    # reply showed the VIP.
    i = next(i for i, e in enumerate(after) if "error" in e)
    assert all(e.get("served") != first for e in after[i:])
    assert {e["peer"] for e in before + after if "peer" in e} == {vip}


def test_tcp_termination_is_opt_in(world: World, balancer: Balancer) -> None:
    from helpers import TCP_PORT

    require_termination(balancer)

    results = {}
    for opt_in in (False, True):
        b1 = Backend(world.backends["b1"].ipv4, TCP_PORT)
        b2 = Backend(world.backends["b2"].ipv4, TCP_PORT)
        svc = Service(VIP4, 80, "tcp", [b1], terminate_tcp=opt_in)
        balancer.upsert(svc)
        if not balancer.attachments():
            balancer.attach(world.client.cgroup)
        p = world.client.popen(
            [sys.executable, program("held_tcp"), VIP4, "80"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert p.stdout and p.stdin
            assert p.stdout.readline().strip() == "connected"
            balancer.upsert(svc.with_backends([b2]))
            p.stdin.write("\n")
            p.stdin.flush()
            results[opt_in] = p.stdout.readline().split()[0]
        finally:
            p.kill()
            p.wait()
        balancer.remove(svc)
    # labserver answers "peer" on a live connection; a destroyed one errors.
    assert results == {False: "alive", True: "error"}, results
    c = balancer.counters()
    assert c["terminated_tcp"] >= 1 and c["terminated"] >= c["terminated_tcp"], c


# --- per-socket state does not leak ------------------------------------------------------


@pytest.mark.slow
def test_state_is_freed_with_the_socket(world: World, balancer: Balancer) -> None:
    # A backend port nobody listens on: datagrams are answered by ICMP only.
    balancer.upsert(Service(VIP4, 53, "udp", [Backend(world.backends["b1"].ipv4, 9)]))
    balancer.attach(world.client.cgroup)
    base = balancer.socket_states()
    n = 1_000_000
    done = int(run_program(world.client, "udp_socket_churn", VIP4, str(n), timeout=300))
    assert done == n
    deadline = time.monotonic() + 10
    while balancer.socket_states() > base and time.monotonic() < deadline:
        time.sleep(0.2)
    assert balancer.socket_states() == base
    # The count is real: sockets held open are counted, then freed.
    held = world.client.popen(
        [sys.executable, program("udp_hold_connected"), VIP4, "1000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout and held.stdin and held.stdout.readline().strip() == "open"
        assert balancer.socket_states() == base + 1000
    finally:
        held.kill()
        held.wait()
    deadline = time.monotonic() + 10
    while balancer.socket_states() > base and time.monotonic() < deadline:
        time.sleep(0.2)
    assert balancer.socket_states() == base
    c = balancer.counters()
    assert c["connect"] + c["sendmsg"] >= n


@pytest.mark.parametrize("algorithm", ["random", "maglev"])
def test_udp_flows_stay_while_the_backend_set_changes(world: World, balancer: Balancer, algorithm: str) -> None:
    def svc(names: tuple[str, ...]) -> Service:
        return Service(VIP4, 53, "udp", [Backend(p.ipv4, UDP_PORT) for p in world.pods(*names)], algorithm=algorithm)

    balancer.upsert(svc(("b1", "b2")))
    balancer.attach(world.client.cgroup)
    p = world.client.popen(
        [sys.executable, program("udp_flows"), VIP4, "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdin and p.stdout

        def step() -> list[str]:
            assert p.stdin and p.stdout
            p.stdin.write("\n")
            p.stdin.flush()
            return list(json.loads(p.stdout.readline()))

        first = json.loads(p.stdout.readline())
        assert set(first) == {"b1", "b2"}
        balancer.upsert(svc(("b1", "b2", "b3")))  # a backend comes: no flow moves
        assert step() == first
        balancer.upsert(svc(("b2", "b3")))  # b1 goes: only its flows move
        after = step()
        for before, now in zip(first, after):
            assert now == before if before != "b1" else now in ("b2", "b3")
        assert "wrong-source" not in after
    finally:
        p.kill()
        p.wait()
