"""Check a built socklb agent image from the inside: ``./run image`` runs this in it.

The container gets exactly the capabilities, mounts and read-only root file
system that ``deploy/socklb-agent.yaml`` gives the DaemonSet's container, and no
network device but loopback.  This script then does what the DaemonSet does, with
the Kubernetes API server test double (``socklb.kubernetes.testing``, shipped in
the image) in place of a cluster:

1. runs ``socklb doctor`` (the kernel features, as the container sees them);
2. starts the test API server on loopback with a Node, a Service and its
   EndpointSlice, and runs the image's entry point, ``socklb kubernetes``,
   against it (kubeconfig) with ``--cgroup`` and ``--pin-dir`` as given;
3. waits for ``/healthz`` 200, reads the pinned balancer with
   ``socklb services -o json`` and checks it serves the Service's endpoint;
4. scales the EndpointSlice to two endpoints and checks the agent applies it;
5. stops the agent (SIGTERM) and removes its pins.

No socket connects to a service: the cgroup it attaches to (made by
``./run image``) holds no process.  Exit status 0 and a last line ``image check:
ok`` mean every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List

from socklb.kubernetes.testing import FakeApiServer

VIP, PORT = "10.96.0.10", 80


def step(text: str) -> None:
    print(f"image check: {text}", flush=True)


def until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise SystemExit(f"image check: FAILED: timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def slice_of(addresses: List[str]) -> Dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}, "nodeName": "node-a"} for a in addresses],
    }


def backends(pin_dir: str) -> List[str]:
    out = subprocess.run(
        ["socklb", "services", "--pin-dir", pin_dir, "-o", "json"], check=True, capture_output=True, text=True
    ).stdout
    found = []
    for svc in json.loads(out):
        if svc["address"] == VIP and svc["port"] == PORT:
            found = sorted(f"{b['address']}:{b['port']}" for b in svc["backends"])
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cgroup", required=True, help="cgroup v2 directory to attach to (empty, made by ./run image)")
    ap.add_argument("--pin-dir", required=True, help="bpffs directory for the agent's pins (removed at the end)")
    args = ap.parse_args()

    step(f"uid {os.getuid()}, capabilities {open('/proc/self/status').read().split('CapEff:')[1].split()[0]}")
    doctor = subprocess.run(["socklb", "doctor"], capture_output=True, text=True)
    print(doctor.stdout, end="", flush=True)
    if doctor.returncode != 0:  # 1: this container cannot balance
        raise SystemExit(f"image check: FAILED: socklb doctor exited {doctor.returncode}: {doctor.stderr}")

    with FakeApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        api.apply({"kind": "Node", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}}})
        api.apply(
            {
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": VIP, "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}]},
            }
        )
        api.apply(slice_of(["10.244.1.2"]))
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            json.dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "test", "cluster": {"server": api.url}}],
                    "users": [{"name": "agent", "user": {"token": "image-check"}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "agent"}}],
                    "current-context": "test",
                },
                f,
            )
        port = free_port()
        argv = [
            "socklb",
            "kubernetes",
            "--node-name",
            "node-a",
            "--cgroup",
            args.cgroup,
            "--kubeconfig",
            kubeconfig,
            "--pin-dir",
            args.pin_dir,
            "--healthz-port",
            str(port),
            "--healthz-address",
            "127.0.0.1",
        ]
        step("starting " + " ".join(argv))
        agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            until(lambda: healthz(port) == 200 or agent.poll() is not None, "/healthz 200")
            if agent.poll() is not None:
                raise SystemExit(f"image check: FAILED: the agent exited {agent.returncode}")
            step("/healthz 200")
            until(lambda: backends(args.pin_dir) == ["10.244.1.2:8080"], "the Service in the pinned maps")
            step(f"{VIP}:{PORT} -> {backends(args.pin_dir)}")
            api.apply(slice_of(["10.244.1.2", "10.244.2.2"]))
            until(lambda: backends(args.pin_dir) == ["10.244.1.2:8080", "10.244.2.2:8080"], "the scaled slice")
            step(f"after scaling the EndpointSlice: {VIP}:{PORT} -> {backends(args.pin_dir)}")
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(20)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
        step(f"agent stopped (exit {agent.returncode})")
    from socklb import Balancer

    Balancer(pin_dir=args.pin_dir).destroy()  # adopt the pins, detach, unpin
    if os.path.exists(args.pin_dir):
        raise SystemExit(f"image check: FAILED: {args.pin_dir} is still there after destroy()")
    step("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
