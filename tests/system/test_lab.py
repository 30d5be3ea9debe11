"""Tests of socklb.testing.lab and socklb.testing.server.  They build real namespaces: root only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from helpers import program, require_root, run_program

from socklb.datapath import cgroup
from socklb.testing import lab as lab_module
from socklb.testing.errors import LabError
from socklb.testing.lab import SERVICE_CIDR4, SERVICE_CIDR6, Lab, Pod, cleanup_leftovers

NETNS_DIR = lab_module._NETNS_DIR


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def netns_names() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return set()


def lab_netns(lab_id: str) -> set[str]:
    return {n for n in netns_names() if n.startswith(f"slb-{lab_id}-")}


def lab_cgroup_root() -> str:
    return os.path.join(cgroup.cgroup2_mount(), "socklb-lab")


def assert_lab_gone(lab_id: str) -> None:
    assert lab_netns(lab_id) == set()
    assert not os.path.exists(os.path.join(lab_cgroup_root(), lab_id))
    assert not os.path.exists(os.path.join(lab_module.LOCK_DIR, lab_id + ".lock"))


def process_dead(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` is gone or a zombie (an orphan is reaped by init, eventually)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def src_dir() -> str:
    import socklb

    return os.path.dirname(os.path.dirname(os.path.abspath(socklb.__file__)))


def child_env() -> dict[str, str]:
    path = src_dir() + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=path)


def ping(pod: Pod, addr: str) -> None:
    """``ping -c1 -W2 addr`` in the pod (a raw-socket equivalent if ping is not installed)."""
    if shutil.which("ping"):
        pod.run(["ping", "-c1", "-W2", addr], timeout=10)
    else:
        run_program(pod, "icmp_echo", addr, timeout=10)


# -- life cycle -----------------------------------------------------------------


def test_create_and_remove() -> None:
    with Lab() as lab:
        assert len(lab.id) == 6 and int(lab.id, 16) >= 0
        a = lab.add_pod("client")
        b = lab.add_pod("b1")
        assert lab.pods == {"client": a, "b1": b}
        assert lab.node.netns == f"slb-{lab.id}-node"
        assert a.netns == f"slb-{lab.id}-pod-client"
        assert lab_netns(lab.id) == {lab.node.netns, a.netns, b.netns}
        assert a.cgroup == os.path.join(lab_cgroup_root(), lab.id, "client")
        assert lab.node.cgroup == os.path.join(lab_cgroup_root(), lab.id, "node")
        for sb in (lab.node, a, b):
            assert cgroup.check_cgroup2_dir(sb.cgroup) == sb.cgroup
        assert os.path.exists(os.path.join(lab_module.LOCK_DIR, lab.id + ".lock"))
        assert (a.index, a.ipv4, a.ipv6, a.gateway4, a.gateway6) == (
            1,
            "10.244.1.2",
            "fd00:244:1::2",
            "10.244.1.1",
            "fd00:244:1::1",
        )
        assert (b.index, b.ipv4, b.ipv6) == (2, "10.244.2.2", "fd00:244:2::2")
        lab_id = lab.id
    assert lab.closed
    assert_lab_gone(lab_id)
    lab.close()  # idempotent
    with pytest.raises(LabError, match="closed"):
        lab.add_pod("late")
    with pytest.raises(LabError, match="closed"):
        a.run(["true"])


def test_exception_inside_with_cleans_up() -> None:
    lab_id = ""
    with pytest.raises(RuntimeError, match="boom"):
        with Lab() as lab:
            lab_id = lab.id
            pod = lab.add_pod("a")
            pod.popen(["sleep", "60"])
            raise RuntimeError("boom")
    assert lab_id
    assert_lab_gone(lab_id)


def lab_cgroup_ids() -> set[str]:
    root = lab_cgroup_root()
    return {d for d in os.listdir(root) if lab_module._ID_RE.match(d)} if os.path.exists(root) else set()


def test_failed_construction_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    before = netns_names()
    ids_before = lab_cgroup_ids()  # other labs (a session fixture, a benchmark) may be alive

    def broken(name: str, values: object) -> None:
        raise OSError(errno.EIO, "injected failure")

    monkeypatch.setattr(lab_module, "_write_sysctls", broken)
    with pytest.raises(LabError, match="injected failure"):
        Lab()
    assert netns_names() == before
    assert lab_cgroup_ids() == ids_before


def test_failed_add_pod_rolls_back(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "injected failure")

    with monkeypatch.context() as m:
        m.setattr(lab_module, "_wait_ready", broken)  # fails after the veth pair exists
        with pytest.raises(LabError, match="injected failure"):
            lab.add_pod("a")
    assert lab.pods == {}
    assert lab_netns(lab.id) == {lab.node.netns}
    assert not os.path.exists(os.path.join(lab.cgroup, "a"))
    assert "veth1" not in lab.node.run(["ip", "-o", "link"]).stdout
    # The lab still works and the pod gets index 1.
    a = lab.add_pod("a")
    assert a.ipv4 == "10.244.1.2"
    ping(a, a.gateway4)


@pytest.mark.parametrize("name", ["", "node", "Upper", "-x", "x-", "a_b", "x" * 41, "a.b"])
def test_bad_pod_names(lab: Lab, name: str) -> None:
    with pytest.raises(LabError, match="invalid pod name"):
        lab.add_pod(name)
    assert lab_netns(lab.id) == {lab.node.netns}


def test_duplicate_pod_name(lab: Lab) -> None:
    lab.add_pod("a")
    with pytest.raises(LabError, match="already has a pod"):
        lab.add_pod("a")


def test_close_kills_processes() -> None:
    with Lab() as lab:
        a = lab.add_pod("a")
        p1 = a.popen(["sleep", "60"])
        p2 = lab.node.popen(["sh", "-c", "sleep 60 & sleep 60"])
        srv = a.serve(tcp=[80])
    for p in (p1, p2, srv):
        assert p.returncode is not None
        with pytest.raises(ProcessLookupError):
            os.kill(p.pid, 0)


# -- network --------------------------------------------------------------------


def test_addresses_and_routes(lab: Lab) -> None:
    a = lab.add_pod("a")
    out = a.run(["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert "10.244.1.2/24" in out and "fd00:244:1::2/64" in out
    assert "tentative" not in out
    assert "default via 10.244.1.1" in a.run(["ip", "-4", "route"]).stdout
    assert "default via fd00:244:1::1" in a.run(["ip", "-6", "route"]).stdout
    for sb in (a, lab.node):
        assert "<LOOPBACK,UP," in sb.run(["ip", "-o", "link", "show", "lo"]).stdout
    node_out = lab.node.run(["ip", "-o", "addr", "show", "dev", "veth1"]).stdout
    assert "10.244.1.1/24" in node_out and "fd00:244:1::1/64" in node_out
    assert lab.node.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    assert lab.node.run(["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).stdout.strip() == "1"
    assert f"unreachable {SERVICE_CIDR4}" in lab.node.run(["ip", "-4", "route"]).stdout
    assert f"unreachable {SERVICE_CIDR6}" in lab.node.run(["ip", "-6", "route"]).stdout
    assert f"unreachable {SERVICE_CIDR4}" in a.run(["ip", "-4", "route"]).stdout


def test_host_namespace_untouched() -> None:
    """Building a lab adds no interface, address or route to the caller's namespace."""

    def run(*argv: str) -> str:  # read-only queries of the caller's namespace
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def snapshot() -> tuple[str, str, str]:
        return run("ip", "-o", "link"), run("ip", "-o", "addr"), run("ip", "route", "show", "table", "all")

    before = snapshot()
    with Lab() as lab:
        lab.add_pod("a")
        lab.add_pod("b")
        during = snapshot()
    assert during == before
    assert snapshot() == before


def test_pod_to_pod_ping(lab: Lab) -> None:
    a = lab.add_pod("a")
    b = lab.add_pod("b")
    c = lab.add_pod("c")
    for src, dst in ((a, b), (b, a), (c, a), (a, c)):
        ping(src, dst.ipv4)
        ping(src, dst.ipv6)
    ping(a, a.gateway6)


def test_service_cidr_fails_fast(lab: Lab) -> None:
    a = lab.add_pod("a")
    results = json.loads(
        run_program(a, "connect_each_timed", "10.96.0.10", "10.96.255.254", "fd00:96::a", "::ffff:10.96.0.10")
    )
    assert len(results) == 8
    for host, _tcp, err, elapsed in results:
        assert err in (errno.EHOSTUNREACH, errno.ENETUNREACH), (host, err)
        assert elapsed < 0.5, (host, elapsed)


def test_node_drops_service_traffic(lab: Lab) -> None:
    """The node's own unreachable routes: a packet from a pod to a VIP is not forwarded."""
    a = lab.add_pod("a")
    # Remove the pod's own unreachable routes to exercise the node's.
    a.run(["ip", "-4", "route", "del", "unreachable", SERVICE_CIDR4])
    a.run(["ip", "-6", "route", "del", "unreachable", SERVICE_CIDR6])
    lines = run_program(a, "connect_each", "10.96.0.10", "fd00:96::a").split("\n")
    assert lines[0] == f"10.96.0.10 {errno.EHOSTUNREACH}"
    assert lines[1] in (f"fd00:96::a {errno.ENETUNREACH}", f"fd00:96::a {errno.EHOSTUNREACH}")


# -- processes ------------------------------------------------------------------


def _wait_for_exec(pid: int, netns_path: str) -> None:
    want = os.stat(netns_path)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        have = os.stat(f"/proc/{pid}/ns/net")
        if (have.st_dev, have.st_ino) == (want.st_dev, want.st_ino):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[0] == b"sleep":
                    return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never entered {netns_path}")


def test_popen_in_pod_cgroup_and_netns(lab: Lab) -> None:
    a = lab.add_pod("a")
    mount = cgroup.cgroup2_mount()
    for sb in (a, lab.node):
        p = sb.popen(["sleep", "30"])
        _wait_for_exec(p.pid, sb.netns_path)
        assert cgroup.pid_cgroup(p.pid) == "/" + os.path.relpath(sb.cgroup, mount)
        assert p.pid in cgroup.cgroup_procs(sb.cgroup)
        p.terminate()
        assert p.wait(5) == -signal.SIGTERM
    # From the inside: the process sees its own cgroup and the pod's interface.
    code = "import socket; print(open('/proc/self/cgroup').read()); print(socket.if_nameindex())"
    out = a.python(code)
    assert "0::/" + os.path.relpath(a.cgroup, mount) + "\n" in out
    assert "'eth0'" in out


def test_sibling_shares_the_netns_not_the_cgroup(lab: Lab) -> None:
    """A pod's sibling: its network namespace (and address), another cgroup
    beside the pod's, so a balancer attached to the pod does not see it."""
    from socklb import Backend, Balancer, Service

    client, web = lab.add_pod("client"), lab.add_pod("web")
    web.serve("web", tcp=[8080])
    bare = client.sibling("bare")
    assert client.sibling("bare") is bare and bare.netns == client.netns
    assert os.path.dirname(bare.cgroup) == os.path.dirname(client.cgroup) and bare.cgroup != client.cgroup
    with pytest.raises(LabError, match="invalid sibling name"):
        client.sibling("Bad/Name")
    with Balancer() as lb:
        lb.upsert(Service("10.96.0.10", 80, "tcp", [Backend(web.ipv4, 8080)]))
        lb.attach(client.cgroup)
        assert run_program(client, "connect_once", "10.96.0.10", "80") == f"ok {client.ipv4}\n"
        # The sibling's connect() is not translated: the service range is unreachable in a pod.
        assert run_program(bare, "connect_once", "10.96.0.10", "80").startswith("error ")
        assert run_program(bare, "connect_once", web.ipv4, "8080") == f"ok {client.ipv4}\n"
    path = bare.cgroup
    lab.close()
    assert not os.path.exists(path)


def test_run_and_python(lab: Lab) -> None:
    a = lab.add_pod("a")
    assert a.run(["echo", "hi"]).stdout == "hi\n"
    assert a.run(["cat"], input="data").stdout == "data"
    r = a.run(["sh", "-c", "echo oops >&2; exit 3"], check=False)
    assert (r.returncode, r.stderr) == (3, "oops\n")
    with pytest.raises(LabError, match=r"status 3.*oops"):
        a.run(["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(LabError, match="command not found"):
        a.run(["no-such-command-socklb"])
    t = time.monotonic()
    with pytest.raises(LabError, match="timed out"):
        a.run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - t < 10
    assert a.python("import sys; print(sys.argv[1:])", "x", "y") == "['x', 'y']\n"
    with pytest.raises(LabError, match="ZeroDivisionError"):
        a.python("1/0")
    assert lab.node.python("print(open('/proc/sys/net/ipv4/ip_forward').read().strip())") == "1\n"


# -- labserver ------------------------------------------------------------------


def test_labserver_tcp_udp(lab: Lab) -> None:
    client = lab.add_pod("client")
    b1 = lab.add_pod("b1")
    srv = b1.serve(tcp=[8080], udp=[8080, 5353])
    try:
        for host in (b1.ipv4, b1.ipv6):
            out = json.loads(run_program(client, "lab_server_client", host, "8080"))
            assert out["tcp"] == "b1\n"
            assert out["tcp_silent"] == "b1\n"
            ip, port = out["tcp_local"]
            assert out["tcp_peer"] == f"b1 {ip} {port}\n"
            assert ip in (client.ipv4, client.ipv6)
            assert out["udp"] == "b1\n"
            assert out["udp_src"] == [host, 8080]
            port = out["udp_local"][1]
            ip = client.ipv6 if ":" in host else client.ipv4
            assert out["udp_peer"] == f"b1 {ip} {port}\n"
        # A v4-mapped address on a v6 socket: the server reports the plain IPv4 peer.
        out = json.loads(run_program(client, "lab_server_client", "::ffff:" + b1.ipv4, "8080"))
        assert out["tcp_peer"] == f"b1 {client.ipv4} {out['tcp_local'][1]}\n"
        # The server inside its own pod answers on loopback, from loopback.
        out = json.loads(run_program(b1, "lab_server_client", "127.0.0.1", "8080"))
        assert out["udp_src"] == ["127.0.0.1", 8080]
        # UDP replies come from the address the request was sent to, not the primary one.
        b1.run(["ip", "addr", "add", "10.244.2.3/24", "dev", "eth0"])
        b1.run(["ip", "addr", "add", "fd00:244:2::3/64", "dev", "eth0", "nodad"])
        for host in ("10.244.2.3", "fd00:244:2::3"):
            out = json.loads(run_program(client, "lab_server_client", host, "8080"))
            assert out["udp_src"] == [host, 8080]
    finally:
        srv.terminate()
        assert srv.wait(5) == 0


def test_labserver_named_and_many_connections(lab: Lab) -> None:
    client = lab.add_pod("client")
    b1 = lab.add_pod("b1")
    b1.serve("other-name", tcp=[80, 81])
    names, rate = run_program(client, "connect_many", b1.ipv6, "2000").rsplit(" ", 1)
    assert names == "{b'other-name\\n'}"
    assert float(rate) > 500, rate


def test_serve_failure_is_reported(lab: Lab) -> None:
    a = lab.add_pod("a")
    a.serve(tcp=[9000])
    with pytest.raises(LabError, match=r"labserver.*(status 1|Address already in use)"):
        a.serve(tcp=[9000])
    with pytest.raises(LabError):
        a.serve()


def test_labserver_cli_module() -> None:
    """``python -m socklb.testing.server`` works too (here on loopback in a lab pod)."""
    with Lab() as lab:
        a = lab.add_pod("a")
        p = a.popen(
            [sys.executable, "-m", "socklb.testing.server", "--name", "m", "--tcp", "7000", "--udp", "7000"],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n"
        code = "import socket; s = socket.create_connection(('::1', 7000)); s.sendall(b'\\n'); print(s.recv(9))"
        out = a.python(code)
        assert out == "b'm\\n'\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(5) == 0
        p.stdout.close()


# -- leftovers ------------------------------------------------------------------


def test_atexit_closes_forgotten_lab() -> None:
    code = "from socklb.testing.lab import Lab; lab = Lab(); lab.add_pod('a').popen(['sleep', '60']); print(lab.id)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert r.returncode == 0, r.stderr
    assert_lab_gone(r.stdout.strip())


def test_forked_child_does_not_close_parents_lab(lab: Lab) -> None:
    a = lab.add_pod("a")
    pid = os.fork()
    if pid == 0:  # child: closing its copy must not tear the lab down
        try:
            lab.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert not lab.closed
    assert lab_netns(lab.id) == {lab.node.netns, a.netns}
    ping(a, a.gateway4)


@pytest.fixture
def crashed_lab() -> Iterator[str]:
    """The id of a lab whose owner was SIGKILLed."""
    p = subprocess.Popen(
        [sys.executable, program("crashed_lab")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert p.stdout is not None
        lab_id = p.stdout.readline().strip()
        assert lab_id, p.stderr.read() if p.stderr else ""
    finally:
        p.kill()
        p.wait()
        for pipe in (p.stdout, p.stderr):
            if pipe:
                pipe.close()
    try:
        yield lab_id
    finally:
        cleanup_leftovers()


def test_cleanup_leftovers_after_sigkill(crashed_lab: str) -> None:
    lab_id = crashed_lab
    assert len(lab_netns(lab_id)) == 3
    lab_cg = os.path.join(lab_cgroup_root(), lab_id)
    server_pids = cgroup.cgroup_procs(os.path.join(lab_cg, "a"))
    assert server_pids  # the labserver survived its parent
    with Lab() as live:  # a lab in use must survive the cleanup
        n = cleanup_leftovers()
        assert n == 3 + 4  # namespaces + cgroup directories (<id>, node, a, b)
        assert_lab_gone(lab_id)
        assert lab_netns(live.id) == {live.node.netns}
        assert os.path.isdir(live.cgroup)
    for pid in server_pids:
        assert process_dead(pid)
    assert cleanup_leftovers() == 0


def test_cleanup_leftovers_orphans_without_lock() -> None:
    """Namespaces and cgroups that match the naming scheme but have no lock file go too."""
    from pyroute2 import netns as pr_netns

    lab_id = "abc123"
    while os.path.exists(os.path.join(lab_module.LOCK_DIR, lab_id + ".lock")):
        lab_id = os.urandom(3).hex()
    names = [f"slb-{lab_id}-node", f"slb-{lab_id}-pod-x"]
    try:
        for n in names:
            pr_netns.create(n)
        cgroup.make_cgroup(os.path.join(lab_cgroup_root(), lab_id, "x"))
        assert cleanup_leftovers() == 4
        assert_lab_gone(lab_id)
    finally:
        for n in names:
            if os.path.exists(os.path.join(NETNS_DIR, n)):
                pr_netns.remove(n)
        cgroup.remove_cgroup(os.path.join(lab_cgroup_root(), lab_id))
        try:
            os.rmdir(lab_cgroup_root())  # only if no other lab uses it
        except OSError:
            pass


def test_labload_counts_who_answered_and_what_failed(lab: Lab) -> None:
    """socklb.testing.load: bounded continuous connections from a pod, each with
    who answered; a port nobody listens on reads as refused, not as served."""
    from socklb.testing.load import Load

    client, server = lab.add_pod("client"), lab.add_pod("server")
    srv = server.serve("srv-1", tcp=[8080])
    try:
        begin = time.monotonic()
        with Load(client, server.ipv4, 8080, max_n=400, max_seconds=20, pause=0) as load:
            end = load.hold(begin, 0.2, at_least=30)
        got = load.between(begin, end)
        assert set(got) == {"srv-1"} and sum(got.values()) >= 30
        made = load.connections()
        assert 30 <= len(made) <= 400 and not any(c.failed for c in made)
        assert all(c.start <= c.connected for c in made)
        assert [c for c in made if c.start >= end] == load.since(end)

        with Load(client, server.ipv6, 9, max_n=5, max_seconds=20, pause=0) as refused:
            deadline = time.monotonic() + 20
            while refused.running and time.monotonic() < deadline:
                time.sleep(0.05)
        out = refused.stop()
        assert len(out) == 5 and {c.who for c in out} == {"error:ECONNREFUSED"} and all(c.failed for c in out)
    finally:
        srv.terminate()
