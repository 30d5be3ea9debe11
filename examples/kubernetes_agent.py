"""Embedding the Kubernetes node agent: a rolling update, followed by real connects.

Run as root:  .venv/bin/python examples/kubernetes_agent.py

(needs the ``kubernetes`` extra: ``pip install 'socklb[kubernetes]'``; the dev
install has it.)

``socklb.kubernetes.Agent`` watches Services and EndpointSlices through the
official ``kubernetes`` client and keeps a ``socklb.Balancer`` programmed with
kube-proxy's rules: ready endpoints are active backends, serving+terminating
ones are used only when no ready one is left, the others are not backends.
Here it talks to ``socklb.kubernetes.testing.FakeApiServer``, the API server
test double that ships with socklb (a real kube-apiserver cannot be installed
on this machine; the double speaks the same HTTP list/watch protocol on
127.0.0.1).  In a real cluster only the ``api_client`` changes - the agent's
pod uses its service account::

    from kubernetes import client, config
    config.load_incluster_config()      # the pod's token, the API server's address
    agent = Agent(lb, node_name=os.environ["NODE_NAME"], api_client=client.ApiClient())

(or ``config.load_kube_config()`` outside the cluster; ``socklb kubernetes
--node-name ... --cgroup ...`` is the same agent as a command).

The lab (socklb.testing.lab) has a client pod and four backend pods; the Balancer is
attached to the client pod's cgroup, as the agent on a node attaches to the
node's kubepods cgroup.  The Service ``shop/web`` (``10.96.0.30:80``) starts
with web-1 and web-2; then the EndpointSlice changes the way a Deployment's
rolling update changes it (new pods start and become ready, old ones turn
serving+terminating, then leave, and their servers stop) while the client pod
connects without pause.  For every step it prints what the agent programmed,
how long after the change that happened (the network programming latency,
from the slice's ``endpoints.kubernetes.io/last-change-trigger-time``), and
where the connections made in that step went; at the end, how many failed (0).

The load is bounded: one connection at a time, 1 ms apart, for at most 40 s or 40,000
connections, stopped by SIGTERM after the last step.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Optional

from socklb import Balancer
from socklb.errors import NotFoundError
from socklb.kubernetes import Agent
from socklb.kubernetes.testing import FakeApiServer
from socklb.testing.lab import Lab
from socklb.testing.load import Load

VIP, PORT, TARGET = "10.96.0.30", 80, 8080
STEP_SECONDS = 0.6  # and at least 50 connections


def rfc3339(t: float) -> str:
    """RFC3339Nano, as the EndpointSlice controller writes its trigger time."""
    d = datetime.fromtimestamp(t, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond:06d}000Z"


def endpoint_slice(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """The Service's one EndpointSlice, as the EndpointSlice controller would write it now."""
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": "web-x7k2p",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": rfc3339(time.time())},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def main() -> None:
    with Lab() as lab, FakeApiServer() as api:
        client = lab.add_pod("client")
        pods = {name: lab.add_pod(name) for name in ("web-1", "web-2", "web-3", "web-4")}
        servers = {name: pod.serve(name, tcp=[TARGET]) for name, pod in pods.items()}
        name_of = {pod.ipv4: name for name, pod in pods.items()}

        def ep(name: str, ready: bool = True, serving: bool = True, terminating: bool = False) -> dict[str, Any]:
            conditions = {"ready": ready, "serving": serving, "terminating": terminating}
            return {"addresses": [pods[name].ipv4], "conditions": conditions, "nodeName": "node-a"}

        # The cluster as the API server holds it.
        api.apply({"kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}}})
        api.apply(
            {
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": VIP,
                    "clusterIPs": [VIP],
                    "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
                },
            }
        )
        api.apply(endpoint_slice([ep("web-1"), ep("web-2")]))

        steps: list[tuple[str, list[dict[str, Any]], Optional[str]]] = [
            # (what happened, the slice's endpoints, a pod whose server stops once it is out)
            ("web-3 starts (not ready)", [ep("web-1"), ep("web-2"), ep("web-3", ready=False, serving=False)], None),
            ("web-3 ready", [ep("web-1"), ep("web-2"), ep("web-3")], None),
            ("web-1 terminating", [ep("web-1", False, True, True), ep("web-2"), ep("web-3")], None),
            ("web-4 ready", [ep("web-1", False, True, True), ep("web-2"), ep("web-3"), ep("web-4")], None),
            ("web-1 gone, web-2 terminating", [ep("web-2", False, True, True), ep("web-3"), ep("web-4")], "web-1"),
            ("web-2 gone", [ep("web-3"), ep("web-4")], "web-2"),
        ]

        def programmed() -> list[tuple[str, str]]:
            try:
                svc = lb.get((VIP, PORT, "tcp"))
            except NotFoundError:
                return []
            return sorted((name_of[b.address], b.state.value) for b in svc.backends)

        def wanted(endpoints: list[dict[str, Any]]) -> list[tuple[str, str]]:
            """kube-proxy's rule: the ready endpoints; if none, the serving+terminating ones."""
            ready = [(name_of[e["addresses"][0]], "active") for e in endpoints if e["conditions"]["ready"]]
            draining = [
                (name_of[e["addresses"][0]], "terminating")
                for e in endpoints
                if e["conditions"]["serving"] and e["conditions"]["terminating"]
            ]
            return sorted(ready or draining)

        def show(backends: list[tuple[str, str]]) -> str:
            return ", ".join(n if s == "active" else f"{n} ({s})" for n, s in backends)

        with Balancer() as lb:
            lb.attach(client.cgroup)
            agent = Agent(lb, node_name="node-a", api_client=api.api_client())
            agent.start()
            try:
                if not agent.wait_synced(30):
                    raise SystemExit(f"the agent did not sync: {agent.stats()}")
                print(f"synced: shop/web {VIP}:{PORT} -> {show(programmed())}")
                load = Load(client, VIP, PORT, max_n=40000, max_seconds=40)
                windows = []  # (step, programmed, latency, begin, end)
                try:
                    begin = time.monotonic()
                    end = load.hold(begin, STEP_SECONDS)
                    windows.append(("before the update", show(programmed()), None, begin, end))
                    for title, endpoints, stopped in steps:
                        applied = agent.programming_latency.count
                        api.apply(endpoint_slice(endpoints))
                        # Applied once the change's latency is measured; the backends are then kube-proxy's.
                        deadline = time.monotonic() + 15
                        while agent.programming_latency.count == applied or programmed() != wanted(endpoints):
                            if time.monotonic() > deadline:
                                raise SystemExit(
                                    f"{title}: the agent programmed {programmed()}, not {wanted(endpoints)}"
                                )
                            time.sleep(0.002)
                        begin = time.monotonic()
                        latency = agent.stats()["network_programming_seconds"]["last"]
                        if stopped is not None:
                            servers.pop(stopped).terminate()  # the pod is gone
                        end = load.hold(begin, STEP_SECONDS)
                        windows.append((title, show(programmed()), latency, begin, end))
                finally:
                    log = load.stop()
            finally:
                agent.stop()
            stats = agent.stats()
        for s in servers.values():
            s.terminate()

        placed = 0
        print(f"{'step':30}  {'applied':>8}  {'programmed':20}  connections made meanwhile")
        for title, backends, latency, begin, end in windows:
            got = load.between(begin, end)
            placed += sum(got.values())
            took = f"{1000 * latency:.1f} ms" if latency is not None else "-"
            detail = ", ".join(f"{who} {c}" for who, c in sorted(got.items()))
            print(f"{title:30}  {took:>8}  {backends:20}  {detail}")
        failed = [c.who for c in log if c.failed]
        print(
            f"failed connections: {len(failed)} of {len(log)}"
            f" ({len(log) - placed} were under way while the backends changed, counted in no step)"
        )
        lat = stats["network_programming_seconds"]
        print(
            f"agent: {stats['full_syncs']} full sync, {stats['applies']} applies, {stats['upserts']} upserts;"
            f" network programming latency p50 {1000 * lat['p50']:.1f} ms, max {1000 * lat['max']:.1f} ms"
        )
        if failed:
            print("errors:", dict(Counter(failed)))
            sys.exit(1)


if __name__ == "__main__":
    main()
