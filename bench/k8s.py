"""The Kubernetes node agent under load: network programming latency, full re-list time, RSS.

Run as root from the repository root::

    .venv/bin/python -m bench.k8s                                  # 1,000 and 10,000 services
    .venv/bin/python -m bench.k8s --scales 1000,10000,50000 --duration 20
    .venv/bin/python -m bench.k8s --scales 200 --duration 2        # a smoke run

For each scale: the API server double (:class:`socklb.kubernetes.testing.FakeApiServer`,
in this process, on 127.0.0.1) holds N Services, each with one EndpointSlice of
``--endpoints`` endpoints, with the metadata real objects carry (uid,
ownerReferences, labels, targetRef, managedFields).  The agent runs in a child
process of its own (``python -m bench.k8s --agent URL``) so that its RSS is the
agent's alone: a :class:`socklb.Balancer` (not attached to any cgroup: nothing
is balanced, the map write is the end point) and a
:class:`socklb.kubernetes.Agent` watching the double through the official client.

1. **Initial sync**: from the agent's start to its first full sync (LIST of
   everything, translation, ``Balancer.sync``), and the agent's RSS then.
2. **Network programming latency**: ``--rate`` endpoint changes per second
   for ``--duration`` seconds, each replacing one endpoint of a random
   Service's slice and stamping ``endpoints.kubernetes.io/last-change-trigger-time``
   with the wall clock; the agent measures from that stamp to the end of the
   map write (kube-proxy's ``network_programming_duration_seconds``).
3. **Full re-list**: the double's history is compacted and every watch ended
   with 410 Gone: the reflectors list everything again, the agent does a full
   sync; measured from the 410 until nothing is pending.

Prints a table and writes ``--out`` (default ``bench/results/k8s.json``).
Targets (issue 11): p99 <= 50 ms at 10,000 services; RSS <= 250 MiB at 50,000 x 10.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence

from bench.rules import vip
from bench.system import rss_kib

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
NS = "bench"
NODES = 3
TARGET_P99_S = 0.050
TARGET_RSS_MIB = 250.0


def _meta(name: str, labels: Dict[str, str], owner: Optional[str] = None) -> Dict[str, Any]:
    meta: Dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": str(uuid.uuid4()),
        "generation": 1,
        "creationTimestamp": "2026-12-01T00:00:00Z",
        "labels": labels,
        "managedFields": [
            {
                "manager": "kube-controller-manager" if owner else "kubectl",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-12-01T00:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, **{f"f:{k}": {} for k in labels}}}},
            }
        ],
    }
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Service", "name": owner, "uid": str(uuid.uuid4()), "controller": True}
        ]
    return meta


def make_service(i: int) -> Dict[str, Any]:
    name = f"svc-{i}"
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": _meta(name, {"app": name}),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip(i),
            "clusterIPs": [vip(i)],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
        "status": {"loadBalancer": {}},
    }


def endpoint_address(i: int, j: int, generation: int = 0) -> str:
    k = (i * 10 + j + generation * 7919) % (250 * 250)
    return f"10.{244 + generation % 8}.{k // 250}.{2 + k % 250}"


def make_endpoint(i: int, j: int, generation: int = 0) -> Dict[str, Any]:
    addr = endpoint_address(i, j, generation)
    return {
        "addresses": [addr],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "nodeName": f"node-{(i + j) % NODES}",
        "targetRef": {
            "kind": "Pod",
            "namespace": NS,
            "name": f"svc-{i}-pod-{j}-{generation}",
            "uid": str(uuid.uuid4()),
        },
    }


def make_slice(i: int, endpoints: int) -> Dict[str, Any]:
    name = f"svc-{i}"
    labels = {
        "kubernetes.io/service-name": name,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        "app": name,
    }
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": _meta(f"{name}-x7k2p", labels, owner=name),
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [make_endpoint(i, j) for j in range(endpoints)],
    }


def rfc3339(t: float) -> str:
    from datetime import datetime, timezone

    d = datetime.fromtimestamp(t, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond:06d}000Z"


# -- the agent process ----------------------------------------------------------------------------------------------


def _rss_mib() -> float:
    return rss_kib() / 1024.0


def _hwm_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def agent_main(url: str, services: int, endpoints: int, min_sync_period: float) -> int:
    """The child: run an Agent against ``url``; answer ``stats`` and ``quit`` on stdin with JSON lines."""
    from kubernetes import client

    from socklb import Balancer
    from socklb.kubernetes import Agent

    cfg = client.Configuration()
    cfg.host = url
    base = _rss_mib()
    lb = Balancer(max_services=max(65536, 2 * services), max_backends=max(262144, 2 * services * endpoints + 1024))
    agent = Agent(
        lb,
        node_name="node-0",
        api_client=client.ApiClient(cfg),
        min_sync_period=min_sync_period,
        reflector_options={"watch_timeout": 600, "page_size": 500},
        freeze_gc=True,  # as the socklb kubernetes command runs it
    )
    t0 = time.monotonic()
    agent.start()
    if not agent.wait_synced(900):
        print(json.dumps({"error": "no first sync in 900 s"}), flush=True)
        return 1
    synced = time.monotonic() - t0
    gc.collect()
    print(
        json.dumps(
            {
                "event": "synced",
                "seconds": synced,
                "rss_mib": _rss_mib(),
                "rss_before_mib": base,
                "services": len(lb.services()),
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "stats":
            st = agent.stats()
            st.pop("reflectors", None)
            st.update(rss_mib=_rss_mib(), hwm_mib=_hwm_mib(), programmed=len(lb.services()))
            print(json.dumps(st), flush=True)
        elif cmd == "quit":
            break
    agent.stop()
    lb.close()
    return 0


# -- the driver ------------------------------------------------------------------------------------------------------


class _Child:
    def __init__(self, argv: List[str]) -> None:
        root = os.path.dirname(BENCH_DIR)  # `python -m bench.k8s` from the repository root
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
        self.lock = threading.Lock()

    def read(self) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the agent process exited with status {self.proc.wait()}")
        out: Dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def ask(self, cmd: str) -> Dict[str, Any]:
        with self.lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)


def measure(
    n: int,
    endpoints: int,
    rate: float,
    duration: float,
    min_sync_period: float,
    log: Any = print,
) -> Dict[str, Any]:
    from socklb.kubernetes.testing import FakeApiServer

    out: Dict[str, Any] = {"services": n, "endpoints_per_service": endpoints, "rate": rate, "duration": duration}
    rng = random.Random(n)
    with FakeApiServer() as api:
        t0 = time.monotonic()
        api.apply({"kind": "Node", "metadata": {"name": "node-0", "labels": {"topology.kubernetes.io/zone": "z1"}}})
        slices = []
        for i in range(n):
            api.apply(make_service(i))
            s = make_slice(i, endpoints)
            api.apply(s)
            slices.append(s)
        api.compact()  # the history of the set-up is not needed: watches start after it
        gc.collect()
        gc.freeze()  # the double's objects live to the end: no cyclic-GC pauses in this process
        log(f"  {n} services x {endpoints} endpoints in the API double ({time.monotonic() - t0:.1f} s)")
        argv = [sys.executable, "-m", "bench.k8s", "--agent", api.url, "--services", str(n)]
        argv += ["--endpoints", str(endpoints), "--min-sync-period", str(min_sync_period)]
        child = _Child(argv)
        try:
            first = child.read()
            out["initial_sync_s"] = first["seconds"]
            out["rss_after_sync_mib"] = first["rss_mib"]
            out["rss_empty_agent_mib"] = first["rss_before_mib"]
            log(f"  initial sync {first['seconds']:.2f} s, agent RSS {first['rss_mib']:.0f} MiB")

            # Endpoint changes at a steady rate, each stamped with its trigger time.
            changes = int(rate * duration)
            generation = [0] * n
            start = time.monotonic()
            late = 0
            for k in range(changes):
                due = start + k / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                elif now - due > 0.1:
                    late += 1
                i = rng.randrange(n)
                generation[i] += 1
                s = slices[i]
                j = k % endpoints
                s["endpoints"][j] = make_endpoint(i, j, generation[i])
                s["metadata"]["annotations"] = {
                    "endpoints.kubernetes.io/last-change-trigger-time": rfc3339(time.time())
                }
                api.apply(s)
            sent_for = time.monotonic() - start
            deadline = time.monotonic() + 30
            st = child.ask("stats")
            while st["network_programming_seconds"]["count"] < changes and time.monotonic() < deadline:
                time.sleep(0.2)
                st = child.ask("stats")
            lat = st["network_programming_seconds"]
            out["changes"] = changes
            out["changes_sent_seconds"] = sent_for
            out["changes_sent_late"] = late
            out["latency_observed"] = lat["count"]
            out["latency_s"] = {k: lat[k] for k in ("p50", "p90", "p99", "max")}
            out["applies"] = st["applies"]
            out["apply_s"] = {k: st["apply_seconds"][k] for k in ("p50", "p99", "max")}
            log(
                f"  {changes} changes at {rate:g}/s: latency p50 {1e3 * (lat['p50'] or 0):.1f} ms, "
                f"p99 {1e3 * (lat['p99'] or 0):.1f} ms, max {1e3 * (lat['max'] or 0):.1f} ms "
                f"({st['applies']} applies, {lat['count']} observed)"
            )

            # A full re-list: 410 Gone on every watch.
            before = st["full_syncs"]
            lists_before = st["relists"]
            t1 = time.monotonic()
            api.compact()
            api.error_watches(410, "Expired", "too old resource version (benchmark)")
            deadline = time.monotonic() + 900
            while True:
                time.sleep(0.05)
                st = child.ask("stats")
                if st["relists"] >= lists_before + 3 and st["full_syncs"] > before and st["pending_changes"] == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("no full sync after the re-list in 900 s")
            out["relist_s"] = time.monotonic() - t1
            out["relist_full_sync_s"] = st["full_sync_seconds"]["last"]
            out["rss_mib"] = st["rss_mib"]
            out["rss_peak_mib"] = st["hwm_mib"]
            out["programmed"] = st["programmed"]
            out["apply_errors"] = st["apply_errors"] + st["writes_failed"]
            log(
                f"  full re-list {out['relist_s']:.2f} s (its full sync {out['relist_full_sync_s']:.2f} s); "
                f"RSS {st['rss_mib']:.0f} MiB, peak {st['hwm_mib']:.0f} MiB"
            )
        finally:
            child.close()
            gc.unfreeze()
    return out


def table(results: Sequence[Dict[str, Any]]) -> str:
    rows = [
        "| services x endpoints | changes/s | latency p50 / p99 / max (ms) | initial sync (s) | full re-list (s) "
        "| agent RSS after sync / peak (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r["latency_s"]
        rows.append(
            f"| {r['services']:,} x {r['endpoints_per_service']} | {r['rate']:g} | "
            f"{1e3 * (lat['p50'] or 0):.1f} / {1e3 * (lat['p99'] or 0):.1f} / {1e3 * (lat['max'] or 0):.1f} | "
            f"{r['initial_sync_s']:.2f} | {r['relist_s']:.2f} | "
            f"{r['rss_after_sync_mib']:.0f} / {r['rss_peak_mib']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.k8s", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--scales", default="1000,10000", help="numbers of Services (default 1000,10000)")
    ap.add_argument("--endpoints", type=int, default=10, help="endpoints per Service (default 10)")
    ap.add_argument("--rate", type=float, default=100.0, help="endpoint changes per second (default 100)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of changes (default 10)")
    ap.add_argument("--min-sync-period", type=float, default=0.01, help="the agent's (default 0.01 s)")
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "results", "k8s.json"), help="JSON results")
    ap.add_argument("--agent", help=argparse.SUPPRESS)  # internal: run the agent process against this URL
    ap.add_argument("--services", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.agent:
        return agent_main(a.agent, a.services, a.endpoints, a.min_sync_period)
    if os.geteuid() != 0:
        print("bench.k8s: run as root (the agent loads BPF maps)", file=sys.stderr)
        return 2
    scales = [int(x.replace("_", "")) for x in a.scales.split(",") if x.strip()]
    results = []
    for n in scales:
        print(f"{n:,} services:", flush=True)
        results.append(measure(n, a.endpoints, a.rate, a.duration, a.min_sync_period))
    print()
    print(table(results))
    for r in results:
        p99 = r["latency_s"]["p99"] or 0.0
        if r["services"] == 10000:
            met = "met" if p99 <= TARGET_P99_S else "NOT met"
            print(f"target p99 <= 50 ms at 10,000 services: {met} ({1e3 * p99:.1f} ms)")
        if r["services"] == 50000:
            rss = r["rss_peak_mib"]
            print(
                f"target RSS <= 250 MiB at 50,000 x 10: {'met' if rss <= TARGET_RSS_MIB else 'NOT met'} ({rss:.0f} MiB)"
            )
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}, f, indent=1)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
