"""The fallbacks for older kernels, forced on this one (features.forced_missing):
each path the feature table can choose runs here with real sockets, so CI
covers what ``./run kernels`` shows on 5.10 and 6.1."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import TCP_PORT, UDP_PORT, VIP4, VIP6, World, dial, program, require_feature, require_root

from socklb import Backend, Balancer, MissingFeatureError, Service
from socklb._native import features


def test_without_set_retval_empty_services_refuse_with_eperm(world: World) -> None:
    require_root()
    with features.forced_missing("set_retval"):
        lb = Balancer(max_services=8, max_backends=16)
    try:
        lb.upsert(Service(VIP4, 80, "tcp", []))
        lb.upsert(Service(VIP6, 80, "tcp", []))
        lb.upsert(Service(VIP4, 53, "udp", [Backend(world.backends["b1"].ipv4, UDP_PORT, state="maintenance")]))
        lb.attach(world.client.cgroup)
        assert dial(world.client, "tcp", VIP4, 80, 2)["errors"] == ["EPERM"] * 2
        assert dial(world.client, "tcp", VIP6, 80, 1)["errors"] == ["EPERM"]
        assert dial(world.client, "udp", VIP4, 53, 1)["errors"] == ["EPERM"]
        assert lb.counters()["no_backend"] == 4
        # The rest of the datapath is the same: a backend makes it balance.
        lb.upsert(Service(VIP4, 80, "tcp", [Backend(world.backends["b2"].ipv4, TCP_PORT)]))
        assert dial(world.client, "tcp", VIP4, 80, 2)["served"] == ["b2"] * 2
    finally:
        lb.close()


def test_without_sock_destroy_sock_diag_terminates_a_tcp_connection(world: World) -> None:
    require_root()
    require_feature("iter_storage")  # the listing iterator
    require_feature("diag_destroy")
    with features.forced_missing("sock_destroy"):
        lb = Balancer(max_services=8, max_backends=16)
    try:
        assert lb.terminates_sockets and lb.termination == "sock_diag"
        b1 = Backend(world.backends["b1"].ipv4, TCP_PORT)
        b2 = Backend(world.backends["b2"].ipv4, TCP_PORT)
        svc = Service(VIP4, 80, "tcp", [b1], terminate_tcp=True)
        lb.upsert(svc)
        lb.attach(world.client.cgroup)
        # A connection to the VIP and one straight to the same backend: only
        # the translated one is terminated (matched by its record too).
        direct = world.client.popen(
            [sys.executable, program("held_tcp"), b1.address, str(TCP_PORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        p = world.client.popen(
            [sys.executable, program("held_tcp"), VIP4, "80"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert p.stdout and p.stdin and direct.stdout and direct.stdin
            assert p.stdout.readline().strip() == "connected"
            assert direct.stdout.readline().strip() == "connected"
            assert lb.socket_states() >= 1  # the counting-only iterator
            lb.upsert(svc.with_backends([b2]))
            for q in (p, direct):
                assert q.stdin
                q.stdin.write("\n")
                q.stdin.flush()
            assert p.stdout.readline().split()[0] == "error"
            assert direct.stdout.readline().strip() == "alive"
        finally:
            for q in (p, direct):
                q.kill()
                q.wait()
        c = lb.counters()
        assert c["terminated_tcp"] == 1 and c["terminated"] == 1, c
    finally:
        lb.close()


def test_without_any_termination_it_is_off_with_the_reason() -> None:
    require_root()
    with features.forced_missing("sock_destroy", "diag_destroy"):
        lb = Balancer(max_services=8, max_backends=16)
        try:
            assert not lb.terminates_sockets
            assert lb.termination.startswith("off: missing the bpf_sock_destroy kfunc"), lb.termination
            assert "CONFIG_INET_DIAG_DESTROY" in lb.termination
            if not features.lacks(features.ITER_STORAGE):
                assert lb.socket_states() == 0  # counting still works
        finally:
            lb.close()
        with pytest.raises(MissingFeatureError, match=r"6\.5"):
            Balancer(max_services=8, max_backends=16, terminate_sockets=True)


def test_without_storage_in_iterators_socket_states_names_the_feature() -> None:
    require_root()
    with features.forced_missing("iter_storage", "sock_destroy"):
        lb = Balancer(max_services=8, max_backends=16)
    try:
        assert not lb.terminates_sockets
        assert "Linux 5.11" in lb.termination, lb.termination
        with pytest.raises(MissingFeatureError, match=r"5\.11"):
            lb.socket_states()
    finally:
        lb.close()


def test_without_so_netns_cookie_balancing_works_and_host_scope_names_the_feature(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before Linux 5.14 a namespace's cookie cannot be read from user space
    (SO_NETNS_COOKIE, found by booting 5.10): the balancer still loads and
    balances; only host-netns-only attachments refuse, naming the feature."""
    require_root()
    from socklb.datapath import node

    monkeypatch.setattr(node, "_SO_NETNS_COOKIE", 0x7FFF)  # no such option: ENOPROTOOPT, as on 5.10
    with pytest.raises(MissingFeatureError, match=r"Linux 5\.14"):
        node.netns_cookie()
    svc = Service(VIP4, 80, backends=[Backend(world.backends["b1"].ipv4, TCP_PORT)])
    with Balancer() as lb:
        assert lb.node_netns_cookie == 0
        lb.upsert(svc)
        with pytest.raises(MissingFeatureError, match=r"SO_NETNS_COOKIE.*5\.14"):
            lb.attach(world.client.cgroup, scope="host-netns-only")
        assert lb.attachments() == []  # nothing attached by the refused call
        with lb.attach(world.client.cgroup):
            got = dial(world.client, "tcp", VIP4, 80, 3)
        assert got["served"] == ["b1"] * 3, got


def test_this_kernel_has_every_feature() -> None:
    require_root()
    assert [f.name for f in features.missing() if f.required] == []
    # An optional one missing skips (the kernel matrix) or fails (CI).
    for f in features.FEATURES:
        require_feature(f.name)
