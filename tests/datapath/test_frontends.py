"""NodePort and HostPort frontends, bind protection, attachment scopes and
exclusions, through real sockets in a lab: the node namespace is the
balancer's node (host-network clients are processes in it, in the node's
cgroup), pods are namespaces of their own."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Dict, List

import pytest
from helpers import require_root, run_program

from socklb._native import features

VIP = "10.96.0.10"
NODE_PORT = 30080


@dataclass
class Site:
    lab: Any
    client: Any  # a pod without sidecar
    side: Any  # a pod with a REDIRECT sidecar
    b1: Any
    b2: Any


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    require_root()
    from socklb.testing.lab import SERVICE_CIDR4, Lab

    with Lab() as lab:
        client, side = lab.add_pod("client"), lab.add_pod("side")
        b1, b2 = lab.add_pod("b1"), lab.add_pod("b2")
        for p in (b1, b2):
            p.serve(tcp=[8080], udp=[8080])
        # The sidecar pod routes the service range (to the node, which refuses
        # it) so that an untranslated connect() reaches its nat OUTPUT rule.
        side.run(["ip", "route", "del", "unreachable", SERVICE_CIDR4])
        side.run([sys.executable, "-c", "from socklb.testing.sidecar import install_redirect; install_redirect(15001)"])
        proc = side.popen(
            [sys.executable, "-m", "socklb.testing.sidecar", "15001", "--route", f"{VIP}:80={b1.ipv4}:8080"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield Site(lab, client, side, b1, b2)


def dial(sb: Any, proto: str, host: str, port: int, n: int = 4, *extra: str) -> Dict[str, List[str]]:
    argv = [sys.executable, "-m", "socklb.testing.client", proto, host, str(port), "-n", str(n), *extra]
    out = sb.run(argv, timeout=60)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# One TCP exchange; prints what came back (the sidecar's line first, if any) or the errno name.


def fetch(sb: Any, host: str = VIP, port: int = 80) -> str:
    return str(run_program(sb, "fetch", host, str(port), timeout=30).strip())


def binds(sb: Any, port: int, *addrs: str) -> Dict[str, int]:
    out = run_program(sb, "bind_each", str(port), *addrs, timeout=30)
    return {a: int(e) for a, e in (line.split() for line in out.splitlines())}


def test_node_port_on_node_addresses_and_loopback(site: Site) -> None:
    from socklb import Backend, Balancer, Frontend, Service

    lab, c = site.lab, site.client
    with Balancer(node_netns=lab.node.netns_path, node_addresses="discover") as lb:
        assert c.gateway4 in lb.node_addresses() and c.gateway6 in lb.node_addresses()
        tcp = Service.node_port(NODE_PORT, backends=[Backend(site.b1.ipv4, 8080), Backend(site.b2.ipv4, 8080)])
        assert tcp.frontend is Frontend.NODE_PORT and tcp.key == ("0.0.0.0", NODE_PORT, "tcp")
        lb.upsert(tcp)
        lb.upsert(Service.node_port(NODE_PORT, "udp", backends=[Backend(site.b1.ipv4, 8080)]))
        lb.upsert(Service.node_port(NODE_PORT + 1, backends=[Backend(site.b2.ipv6, 8080)], family=6))
        lb.attach(lab.cgroup)

        # Host-network clients: any node address, and loopback.
        r = dial(lab.node, "tcp", c.gateway4, NODE_PORT, 20)
        assert not r["errors"] and set(r["served"]) == {"b1", "b2"}
        assert set(r["peers"]) == {f"{c.gateway4}:{NODE_PORT}"}  # getpeername shows what was dialled
        r = dial(lab.node, "tcp", "127.0.0.1", NODE_PORT)
        assert not r["errors"] and set(r["served"]) <= {"b1", "b2"}
        r = dial(lab.node, "udp", "127.0.0.1", NODE_PORT)  # sendmsg, replies from the VIP
        assert r["served"] == ["b1"] * 4 and set(r["peers"]) == {f"127.0.0.1:{NODE_PORT}"}
        assert dial(lab.node, "tcp", "::1", NODE_PORT + 1)["served"] == ["b2"] * 4
        assert dial(lab.node, "tcp", c.gateway6, NODE_PORT + 1)["served"] == ["b2"] * 4
        # A v4-mapped node address from an IPv6 socket reaches the IPv4 NodePort.
        assert dial(lab.node, "tcp", f"::ffff:{c.gateway4}", NODE_PORT)["served"][0] in ("b1", "b2")
        # A pod reaches the NodePort on the node's address, not on its own loopback.
        assert not dial(c, "tcp", c.gateway4, NODE_PORT)["errors"]
        assert dial(c, "tcp", "127.0.0.1", NODE_PORT, 1)["errors"] == ["ECONNREFUSED"]
        # Another port of the node is not a service.
        assert dial(lab.node, "tcp", c.gateway4, NODE_PORT + 2, 1)["errors"] == ["ECONNREFUSED"]
        # An address that is not the node's does not reach the NodePort.
        lb.set_node_addresses([c.gateway6])
        assert dial(lab.node, "tcp", c.gateway4, NODE_PORT, 1)["errors"] == ["ECONNREFUSED"]
        assert dial(lab.node, "tcp", "127.0.0.1", NODE_PORT, 1)["served"][0] in ("b1", "b2")
        # The maps decode to what was written (what a restarted controller adopts).
        assert sorted(lb.kernel_services(), key=str) == sorted(lb.services(), key=str)


def test_node_addresses_refresh_follows_the_node(site: Site) -> None:
    from socklb import Backend, Balancer, InvalidValueError, Service

    lab, c = site.lab, site.client
    extra = "192.0.2.77"
    with Balancer(node_netns=lab.node.netns_path) as lb:
        assert lb.node_addresses() == []
        lb.upsert(Service.node_port(NODE_PORT, backends=[Backend(site.b1.ipv4, 8080)]))
        lb.attach(lab.node.cgroup)
        assert dial(lab.node, "tcp", c.gateway4, NODE_PORT, 1)["errors"] == ["ECONNREFUSED"]
        lab.node.run(["ip", "addr", "add", f"{extra}/32", "dev", "lo"])
        try:
            assert extra in lb.refresh_node_addresses()
            assert dial(lab.node, "tcp", extra, NODE_PORT, 1)["served"] == ["b1"]
        finally:
            lab.node.run(["ip", "addr", "del", f"{extra}/32", "dev", "lo"])
        assert extra not in lb.refresh_node_addresses()
        for bad in (["127.0.0.1"], ["fe80::1"], ["0.0.0.0"], "10.0.0.1", [5]):
            with pytest.raises(InvalidValueError):
                lb.set_node_addresses(bad)  # type: ignore[arg-type]
        assert c.gateway4 in lb.node_addresses()  # refused input changed nothing


def test_host_port_on_one_address_or_all(site: Site) -> None:
    from socklb import Backend, Balancer, Service

    lab, c = site.lab, site.client
    with Balancer(node_netns=lab.node.netns_path, node_addresses="discover") as lb:
        lb.upsert(Service.host_port(8443, backends=[Backend(site.b1.ipv4, 8080)], address=c.gateway4))
        lb.upsert(Service.host_port(8444, backends=[Backend(site.b2.ipv4, 8080)]))
        lb.attach(lab.cgroup)
        assert dial(c, "tcp", c.gateway4, 8443, 2)["served"] == ["b1", "b1"]
        assert dial(lab.node, "tcp", site.side.gateway4, 8443, 1)["errors"] == ["ECONNREFUSED"]  # one address only
        assert dial(lab.node, "tcp", site.side.gateway4, 8444, 2)["served"] == ["b2", "b2"]
        assert dial(lab.node, "tcp", "127.0.0.1", 8444, 1)["served"] == ["b2"]
        # A hostPort is not bind-protected: only NodePorts are.
        assert binds(lab.node, 8444, "0.0.0.0") == {"0.0.0.0": 0}


def test_post_bind_refuses_a_node_port_with_eaddrinuse(site: Site) -> None:
    from socklb import Backend, Balancer, Service

    lab, c = site.lab, site.client
    with Balancer(node_netns=lab.node.netns_path, node_addresses="discover") as lb:
        lb.upsert(Service.node_port(NODE_PORT, backends=[Backend(site.b1.ipv4, 8080)]))
        lb.attach(lab.cgroup)
        node_addrs = ("0.0.0.0", "127.0.0.1", c.gateway4, "::")
        # EPERM where the kernel lacks bpf_set_retval (features.SET_RETVAL's fallback).
        refused = errno.EPERM if features.lacks(features.SET_RETVAL) else errno.EADDRINUSE
        assert binds(lab.node, NODE_PORT, *node_addrs) == {a: refused for a in node_addrs}
        # IPv6-only addresses cannot carry an IPv4 NodePort; other ports bind.
        assert binds(lab.node, NODE_PORT, c.gateway6, "::1") == {c.gateway6: 0, "::1": 0}
        assert binds(lab.node, NODE_PORT + 5, "0.0.0.0") == {"0.0.0.0": 0}
        # A pod's own namespace is not the node's.
        assert binds(c, NODE_PORT, "0.0.0.0") == {"0.0.0.0": 0}
        lb.remove(("0.0.0.0", NODE_PORT, "tcp"))
        assert binds(lab.node, NODE_PORT, "0.0.0.0") == {"0.0.0.0": 0}


def test_sidecar_sees_the_vip_only_when_its_pod_is_excluded(site: Site) -> None:
    from socklb import Backend, Balancer, Service

    lab = site.lab
    with Balancer(node_netns=lab.node.netns_path) as lb:
        lb.upsert(Service(VIP, 80, backends=[Backend(site.b2.ipv4, 8080)]))
        att = lb.attach(lab.cgroup, exclude=[site.side.cgroup])
        assert att.excluded == [site.side.cgroup]
        # Excluded: the connect() reaches the REDIRECT rule with the VIP.
        assert fetch(site.side) == f"via-sidecar orig={VIP}:80 upstream={site.b1.ipv4}:8080 | b1"
        assert fetch(site.client) == "b2"  # balanced at the socket
        att.include(site.side.cgroup)
        # Balanced: the socket was rewritten before nat OUTPUT, the sidecar sees the backend.
        assert fetch(site.side) == f"via-sidecar orig={site.b2.ipv4}:8080 upstream={site.b2.ipv4}:8080 | b2"
        att.exclude(site.side.cgroup)
        assert fetch(site.side).startswith(f"via-sidecar orig={VIP}:80 ")
        att.detach()
        assert fetch(site.client) == "EHOSTUNREACH"  # the unreachable service route: nothing translates


def test_host_netns_only_translates_the_node_not_the_pods(site: Site) -> None:
    from socklb import Backend, Balancer, Service

    lab = site.lab
    with Balancer(node_netns=lab.node.netns_path) as lb:
        lb.upsert(Service(VIP, 80, backends=[Backend(site.b2.ipv4, 8080)]))
        att = lb.attach(lab.cgroup, scope="host-netns-only")
        assert att.scope == "host-netns-only"
        assert fetch(lab.node) == "b2"
        assert fetch(site.client) == "EHOSTUNREACH"
        assert fetch(site.side).startswith(f"via-sidecar orig={VIP}:80 ")
    # The default node is the namespace the balancer was made in: not the lab's.
    with Balancer() as lb:
        lb.upsert(Service(VIP, 80, backends=[Backend(site.b2.ipv4, 8080)]))
        lb.attach(lab.cgroup, scope="host-netns-only")
        assert fetch(lab.node) == "EHOSTUNREACH"


def test_scopes_and_exclusions_survive_a_restart(site: Site) -> None:
    from socklb import Backend, Balancer, Service, SocklbError
    from socklb.datapath import node

    lab = site.lab
    pin_dir = f"/sys/fs/bpf/socklb-test-fe-{uuid.uuid4().hex}"
    lb = Balancer(pin_dir=pin_dir, node_netns=lab.node.netns_path, node_addresses=[site.client.gateway4])
    try:
        lb.upsert(Service(VIP, 80, backends=[Backend(site.b2.ipv4, 8080)]))
        lb.upsert(Service.node_port(NODE_PORT, backends=[Backend(site.b1.ipv4, 8080)]))
        lb.attach(lab.cgroup, exclude=[site.side.cgroup])
        lb.attach(site.b1.cgroup, scope="host-netns-only")
        lb.close()
        assert fetch(site.side).startswith(f"via-sidecar orig={VIP}:80 ")  # pinned, still excluded
        lb = Balancer.open(pin_dir)
        assert lb.node_addresses() == [site.client.gateway4]
        assert lb.node_netns_cookie == node.netns_cookie(lab.node.netns_path)
        with pytest.raises(SocklbError, match="node_netns"):
            lb.refresh_node_addresses()  # the pinned node is not this thread's namespace
        atts = {a.cgroup: a for a in lb.attachments()}
        assert atts[lab.cgroup].excluded == [site.side.cgroup] and atts[lab.cgroup].scope == "all"
        assert atts[site.b1.cgroup].scope == "host-netns-only"
        assert fetch(site.side).startswith(f"via-sidecar orig={VIP}:80 ")
        assert fetch(site.client) == "b2"
        assert binds(lab.node, NODE_PORT, "0.0.0.0") == {"0.0.0.0": errno.EADDRINUSE}
        assert dial(lab.node, "tcp", site.client.gateway4, NODE_PORT, 1)["served"] == ["b1"]
        atts[lab.cgroup].include(site.side.cgroup)
        assert fetch(site.side).startswith(f"via-sidecar orig={site.b2.ipv4}:8080 ")
    finally:
        if lb.closed:
            lb = Balancer.open(pin_dir)
        lb.destroy()
    assert not os.path.exists(pin_dir)


def test_scope_and_exclusion_errors(site: Site) -> None:
    from socklb import Balancer, InvalidValueError

    lab = site.lab
    with Balancer() as lb:
        with pytest.raises(InvalidValueError, match="scope"):
            lb.attach(lab.cgroup, scope="pods")
        with pytest.raises(InvalidValueError, match="not below"):
            lb.attach(site.client.cgroup, exclude=[site.side.cgroup])
        with pytest.raises(InvalidValueError, match="one path"):
            lb.attach(lab.cgroup, exclude=site.side.cgroup)
        assert lb.attachments() == []  # refused input attached nothing
        att = lb.attach(lab.cgroup)
        att.exclude(site.side.cgroup)
        with pytest.raises(InvalidValueError, match="excluded already"):
            att.exclude(site.side.cgroup)
        with pytest.raises(InvalidValueError, match="not excluded"):
            att.include(site.client.cgroup)
        with pytest.raises(InvalidValueError, match="excluded from"):
            lb.attach(site.side.cgroup)
        # A pod that went away: its exclusion is removed by the path it had.
        gone = os.path.join(lab.cgroup, "gone-pod")
        os.mkdir(gone)
        try:
            att.exclude(gone)
        finally:
            os.rmdir(gone)
        att.include(gone)
        assert att.excluded == [site.side.cgroup]
