"""The node agent end to end: objects change in the API server double, real connects from lab pods land
where kube-proxy's rules say.

Every packet stays in the lab's namespaces (the service range is an
unreachable route there, so an untranslated connect fails at once); the API
double listens on 127.0.0.1.  The lab has one node namespace: a "node" here is
a group of pods with its own Agent and Balancer attached to that node's client
pods' cgroups, as the agent on a real node attaches to its kubepods cgroup.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import pytest
from helpers import dial, in_ci, refused, require_root
from k8s_objects import endpoint, eslice, node, service

from socklb.kubernetes.testing import FakeApiServer

try:
    import kubernetes  # noqa: F401  (whether it imports is all this module asks)

    HAVE_KUBERNETES = True
except ImportError:  # the dev extra installs it
    if not in_ci():
        pytest.skip("the kubernetes package is not installed", allow_module_level=True)
    HAVE_KUBERNETES = False  # CI=true: every test here fails (below), none is skipped

FAST = {"watch_timeout": 5, "read_timeout_margin": 2, "backoff_initial": 0.05, "backoff_max": 0.3}
PORT = 9080  # the pods of this module serve here
NODES = ("node-a", "node-b", "node-c")
ZONES = {"node-a": "z1", "node-b": "z2", "node-c": "z3"}


class Cluster:
    """Pods by node: clients ``client-a1``, ``client-a2``, ``client-b``, ``client-c`` and servers
    ``srv-a1``, ``srv-a2``, ``srv-b``, ``srv-c``, each answering with its name on PORT."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        names = ["client-a1", "client-a2", "client-b", "client-c", "srv-a1", "srv-a2", "srv-b", "srv-c"]
        self.pods = {n: lab.add_pod(n) for n in names}
        for n in names:
            if n.startswith("srv-"):
                self.pods[n].serve(n, tcp=[PORT])

    def ip(self, name: str) -> str:
        return str(self.pods[name].ipv4)

    def node_of(self, name: str) -> str:
        return "node-" + name.split("-")[1][0]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_root()
    if not HAVE_KUBERNETES:
        pytest.fail("the kubernetes package is missing: install socklb[dev] (CI=true forbids skipping)")
    from socklb.testing.lab import Lab

    with Lab() as lab:
        yield Cluster(lab)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        for n in NODES:
            server.apply(node(n, zone=ZONES[n]))
        yield server


@pytest.fixture
def agents(api: FakeApiServer, cluster: Cluster) -> Iterator[Callable[..., Any]]:
    """Start an Agent with a real Balancer attached to the given client pods' cgroups."""
    from socklb import Balancer
    from socklb.kubernetes import Agent

    made: List[Any] = []

    def start(node_name: str, clients: Sequence[str], **kw: Any) -> Any:
        lb = Balancer(max_services=256, max_backends=1024)
        made.append(lb)
        for c in clients:
            lb.attach(cluster.pods[c].cgroup)
        agent = Agent(lb, node_name=node_name, api_client=api.api_client(), reflector_options=FAST, **kw)
        made.append(agent)
        agent.start()
        assert agent.wait_synced(15), agent.stats()
        return agent

    yield start
    for obj in reversed(made):
        if hasattr(obj, "wait_synced"):
            obj.stop()
        else:
            obj.close()


def until(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.01)


def programmed(agent: Any, vip: str, port: int = 80) -> Optional[List[str]]:
    """The backend addresses the agent's balancer holds for vip:port, or None."""
    for s in agent.balancer.services():
        if s.key == (vip, port, "tcp"):
            return sorted(b.address for b in s.backends)
    return None


def served(pod: Any, vip: str, n: int = 48, port: int = 80) -> Counter[str]:
    """Who answered ``n`` connections.  A check that every one of k random backends
    answers misses one with probability about k * (1 - 1/k) ** n: at n = 48, 7e-15
    for two backends and 1e-8 for three (at n = 6 it was 1 in 32 for two)."""
    res = dial(pod, "tcp", vip, port, n, "--timeout", "2", "--deadline", "30")
    return Counter(res["served"] + [f"error:{e}" for e in res["errors"]])


def web(api: FakeApiServer, cluster: Cluster, name: str, vip: str, pods: Sequence[str], **spec: Any) -> None:
    api.apply(service(name, vip, **spec))
    eps = [endpoint(cluster.ip(p), node=cluster.node_of(p)) for p in pods]
    api.apply(eslice(f"{name}-1", name, eps, ports=[("http", PORT, "TCP")]))


def test_api_changes_reach_real_connects(api: FakeApiServer, cluster: Cluster, agents: Any) -> None:
    vip = "10.96.5.1"
    web(api, cluster, "web", vip, ["srv-a1", "srv-b"])
    agent = agents("node-a", ["client-a1"])
    client = cluster.pods["client-a1"]
    assert set(served(client, vip)) == {"srv-a1", "srv-b"}
    # New endpoints: the connects follow.
    api.apply(eslice("web-1", "web", [endpoint(cluster.ip("srv-c"))], ports=[("http", PORT, "TCP")]))
    until(lambda: programmed(agent, vip) == [cluster.ip("srv-c")])
    assert set(served(client, vip)) == {"srv-c"}
    # A second port, joined by name with the slice's.
    api.apply(service("web", vip, ports=[("http", 80, "TCP"), ("alt", 81, "TCP")]))
    api.apply(
        eslice(
            "web-1",
            "web",
            [endpoint(cluster.ip("srv-a2"))],
            ports=[("http", PORT, "TCP"), ("alt", PORT, "TCP")],
        )
    )
    until(lambda: programmed(agent, vip, 81) == [cluster.ip("srv-a2")] and programmed(agent, vip) is not None)
    assert set(served(client, vip, port=81)) == {"srv-a2"}
    # No endpoints: refused at once; the Service deleted: not translated (unreachable in the lab).
    api.delete("EndpointSlice", "default", "web-1")
    until(lambda: programmed(agent, vip) == [])
    assert set(served(client, vip, n=3)) == {"error:" + refused()}
    api.delete("Service", "default", "web")
    until(lambda: programmed(agent, vip) is None)
    assert all(k.startswith("error:") and k != "error:ECONNREFUSED" for k in served(client, vip, n=3))
    assert agent.stats()["full_syncs"] == 1


def _loop(pod: Any, vip: str, seconds: float, port: int = 80) -> subprocess.Popen[str]:
    """Connections one after the other for ``seconds`` (at most 200,000)."""
    argv = [sys.executable, "-m", "socklb.testing.client", "tcp", vip, str(port), "-n", "200000"]
    argv += ["--timeout", "3", "--deadline", str(seconds)]
    return pod.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # type: ignore[no-any-return]


def _result(proc: subprocess.Popen[str]) -> Dict[str, List[str]]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    res: Dict[str, List[str]] = json.loads(out)
    res["errors"] = [e for e in res["errors"] if e != "deadline"]  # the loop's normal end
    return res


def test_rolling_update_under_load_fails_no_connection(api: FakeApiServer, cluster: Cluster, agents: Any) -> None:
    vip, port = "10.96.5.2", 80
    old = {n: cluster.pods[n] for n in ("srv-a1", "srv-b")}
    new = {n: cluster.pods[n] for n in ("srv-a2", "srv-c")}
    # This Deployment's pods serve on their own port, so the old ones can really go away.
    rport = 9181
    servers = {n: p.serve(f"{n}-v1", tcp=[rport]) for n, p in old.items()}
    try:
        api.apply(service("roll", vip))

        def publish(eps: List[Any]) -> None:
            api.apply(eslice("roll-1", "roll", eps, ports=[("http", rport, "TCP")], trigger=time.time()))

        def ep(n: str, **cond: Any) -> Any:
            return endpoint(cluster.ip(n), node=cluster.node_of(n), **cond)

        publish([ep(n) for n in old])
        agent = agents("node-a", ["client-a1", "client-a2"])
        assert programmed(agent, vip) == sorted(cluster.ip(n) for n in old)
        loops = [_loop(cluster.pods[c], vip, 7.0, port) for c in ("client-a1", "client-a2")]
        t0 = time.monotonic()
        time.sleep(0.5)
        for n, p in new.items():
            servers[n] = p.serve(f"{n}-v2", tcp=[rport])
        steps: List[List[Any]] = [
            [ep("srv-a1"), ep("srv-b"), ep("srv-a2", ready=False)],  # new pod starting
            [ep("srv-a1"), ep("srv-b"), ep("srv-a2")],  # ready
            [ep("srv-a1", ready=False, serving=True, terminating=True), ep("srv-b"), ep("srv-a2")],
            [ep("srv-a1", ready=False, serving=True, terminating=True), ep("srv-b"), ep("srv-a2"), ep("srv-c")],
            [
                ep("srv-a1", ready=False, serving=False, terminating=True),  # stopped serving: not a backend
                ep("srv-b", ready=False, serving=True, terminating=True),
                ep("srv-a2"),
                ep("srv-c"),
            ],
            [ep("srv-a2"), ep("srv-c")],  # the old pods are gone from the slice
        ]
        for eps in steps:
            publish(eps)
            time.sleep(0.5)
        until(lambda: programmed(agent, vip) == sorted(cluster.ip(n) for n in new), what="the new pods only")
        time.sleep(0.3)  # connections already made to the old pods finish (a grace period)
        for n in old:
            servers.pop(n).terminate()  # the old pods really go away
        results = [_result(p) for p in loops]
        elapsed = time.monotonic() - t0
        # After the update only the new pods answer.
        after = set(served(cluster.pods["client-a2"], vip))
    finally:
        for s in servers.values():
            s.terminate()
        for s in servers.values():
            s.wait(10)
    total = sum(len(r["served"]) for r in results)
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], Counter(errors)
    assert total >= 100, (total, elapsed)
    seen = Counter(name for r in results for name in r["served"])
    assert {"srv-a1-v1", "srv-b-v1", "srv-a2-v2", "srv-c-v2"} <= set(seen), seen
    assert after == {"srv-a2-v2", "srv-c-v2"}
    lat = agent.stats()["network_programming_seconds"]
    assert lat["count"] >= len(steps)


def test_multi_node_local_policy_and_zone_hints(api: FakeApiServer, cluster: Cluster, agents: Any) -> None:
    clients = {"node-a": "client-a1", "node-b": "client-b", "node-c": "client-c"}
    by_node = {n: agents(n, [c]) for n, c in clients.items()}
    # internalTrafficPolicy Local: each node's pods reach their node's endpoints, node-c has none.
    web(api, cluster, "local", "10.96.6.1", ["srv-a1", "srv-a2", "srv-b"], internalTrafficPolicy="Local")
    # Zone hints: every endpoint hinted for its own zone.
    api.apply(service("zonal", "10.96.6.2"))
    zonal = [
        endpoint(cluster.ip(p), node=cluster.node_of(p), zones=[ZONES[cluster.node_of(p)]])
        for p in ("srv-a1", "srv-b", "srv-c")
    ]
    api.apply(eslice("zonal-1", "zonal", zonal, ports=[("http", PORT, "TCP")]))
    # Cluster policy, no hints: everyone everywhere.
    web(api, cluster, "everywhere", "10.96.6.3", ["srv-a1", "srv-b", "srv-c"])
    for a in by_node.values():

        def all_three(a: Any = a) -> bool:
            return (
                programmed(a, "10.96.6.3") is not None
                and programmed(a, "10.96.6.2") is not None
                and programmed(a, "10.96.6.1") is not None
            )

        until(all_three)
    got = {
        n: {vip: set(served(cluster.pods[c], vip)) for vip in ("10.96.6.1", "10.96.6.2", "10.96.6.3")}
        for n, c in clients.items()
    }
    assert got["node-a"]["10.96.6.1"] == {"srv-a1", "srv-a2"}
    assert got["node-b"]["10.96.6.1"] == {"srv-b"}
    assert got["node-c"]["10.96.6.1"] == {"error:" + refused()}  # no local endpoint: refused, not a hang
    assert got["node-a"]["10.96.6.2"] == {"srv-a1"}
    assert got["node-b"]["10.96.6.2"] == {"srv-b"}
    assert got["node-c"]["10.96.6.2"] == {"srv-c"}
    for n in NODES:
        assert got[n]["10.96.6.3"] == {"srv-a1", "srv-b", "srv-c"}, n
    assert by_node["node-c"].stats()["no_local_endpoints"] == 1
    # node-c moves to zone z1: its agent re-syncs and its pods follow z1's hint.
    api.apply(node("node-c", zone="z1"))
    until(lambda: programmed(by_node["node-c"], "10.96.6.2") == [cluster.ip("srv-a1")])
    assert set(served(cluster.pods["client-c"], "10.96.6.2")) == {"srv-a1"}
    # A hint missing on one ready endpoint: hints are not used at all.
    zonal[2].pop("hints")
    api.apply(eslice("zonal-1", "zonal", zonal, ports=[("http", PORT, "TCP")]))
    until(lambda: all(len(programmed(a, "10.96.6.2") or []) == 3 for a in by_node.values()))
    assert set(served(cluster.pods["client-b"], "10.96.6.2")) == {"srv-a1", "srv-b", "srv-c"}


# -- the agent as a process: SIGKILL and restart with pinned state --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kubeconfig(path: str, url: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {"token": "test"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        "current-context": "fake",
    }
    with open(path, "w") as f:
        json.dump(cfg, f)  # JSON is YAML


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _metrics(port: int) -> Dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def test_sigkill_and_restart_converge_with_pinned_state(api: FakeApiServer, cluster: Cluster, tmp_path: Any) -> None:
    from socklb import Balancer

    pin_dir = f"/sys/fs/bpf/socklb-test-{secrets.token_hex(4)}"
    kubeconfig = str(tmp_path / "kubeconfig")
    _kubeconfig(kubeconfig, api.url)
    port = _free_port()
    client = cluster.pods["client-b"]
    argv = [
        sys.executable,
        "-m",
        "socklb.cli",
        "kubernetes",
        "--node-name",
        "node-b",
        "--cgroup",
        client.cgroup,
        "--kubeconfig",
        kubeconfig,
        "--pin-dir",
        pin_dir,
        "--healthz-port",
        str(port),
        "--healthz-address",
        "127.0.0.1",
        "--log-level",
        "warning",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    procs: List[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = tmp_path / f"agent-{len(procs)}.log"  # a file: a pipe nobody reads could fill and stall it
        with open(log, "wb") as f:
            p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=f)
        procs.append(p)
        # Most of a start is imports: the kubernetes client's API classes alone took 8.8 s on
        # this 2-core machine at a load average of 15 (30 s was exceeded 2 times in 45 runs).
        try:
            until(lambda: _healthz(port) == 200 or p.poll() is not None, timeout=60, what="the agent's /healthz 200")
        except AssertionError as e:
            raise AssertionError(f"{e}; the agent's log: {log.read_text()[-3000:]}") from None
        assert p.poll() is None, log.read_text()
        return p

    stable, moving, added, deleted = "10.96.7.1", "10.96.7.2", "10.96.7.3", "10.96.7.4"
    web(api, cluster, "stable", stable, ["srv-a1", "srv-b"])
    web(api, cluster, "moving", moving, ["srv-a1"])
    web(api, cluster, "deleted", deleted, ["srv-c"])
    loop = None
    try:
        agent = start()
        assert set(served(client, moving)) == {"srv-a1"}
        loop = _loop(client, stable, 8.0)
        time.sleep(0.3)
        web(api, cluster, "moving", moving, ["srv-b"])
        until(lambda: set(served(client, moving, n=6)) == {"srv-b"}, what="the running agent applies a change")
        # Changes in flight when the agent is killed, and more while it is dead.
        web(api, cluster, "moving", moving, ["srv-c"])
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        web(api, cluster, "moving", moving, ["srv-a2", "srv-c"])
        web(api, cluster, "added", added, ["srv-a2"])
        api.delete("Service", "default", "deleted")
        assert set(served(client, stable)) == {"srv-a1", "srv-b"}  # the pinned state serves on
        start()
        until(lambda: set(served(client, moving, n=12)) == {"srv-a2", "srv-c"}, what="convergence after restart")
        assert set(served(client, added, n=6)) == {"srv-a2"}
        # The restarted agent's full sync wrote only what changed: "moving" and "added",
        # and removed "deleted"; "stable" was not touched.
        metrics = _metrics(port)
        assert metrics["socklb_agent_upserts_total"] == 2, metrics
        assert metrics["socklb_agent_removes_total"] == 1, metrics
        assert metrics["socklb_agent_full_syncs_total"] >= 1
        # the balancer's datapath metrics (socklb.ops.metrics) on the same endpoint
        assert metrics["socklb_attachments"] == 1, metrics
        assert all(k.startswith("error:") and k != "error:ECONNREFUSED" for k in served(client, deleted, n=3))
        res = _result(loop)
        loop = None
        assert res["errors"] == [], Counter(res["errors"])
        assert len(res["served"]) >= 50 and set(res["served"]) == {"srv-a1", "srv-b"}
    finally:
        if loop is not None:
            loop.kill()
            loop.wait(10)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        if os.path.exists(pin_dir):
            Balancer.open(pin_dir).destroy()  # detach and remove the pins
    assert not os.path.exists(pin_dir)
