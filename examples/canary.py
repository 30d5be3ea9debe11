"""A canary rollout: shift a service from v1 to v2 in steps, under load.

Run as root:  .venv/bin/python examples/canary.py

It builds its own lab with socklb.testing.lab (network namespaces and cgroups it
creates and removes; no packet leaves them): a client pod, two v1 pods and
two v2 pods, each serving TCP 8080 with its name.  A client process in the
client pod (socklb.testing.load) connects to the service 10.96.0.10:80 in a loop,
without pause, and reports every connection.  Meanwhile the balancer moves the traffic from
v1 to v2 in four steps of weights - 100/0, 90/10, 50/50, 0/100 - by updating
the backends' weights (a version of weight 0 is drained: kept, never chosen
for a new connection).  Weights are honoured by the default algorithm, and an
update swaps the service's whole backend list at once, so no connection fails
while the weights change.

It prints, per step, the connections counted and v2's measured share, then
the total of failed connections; it exits with status 1 if one failed:

    step  v1/v2  connects  v2 share  failed
       1  100/0      1000     0.000       0
       2  90/10      1000     0.104       0
       3  50/50      1000     0.493       0
       4  0/100      1000     1.000       0
    failed connections: 0
"""

from __future__ import annotations

import sys
import time
from typing import List

from socklb import Backend, Balancer, Service
from socklb.testing.lab import Lab
from socklb.testing.load import Load

VIP, PORT, TARGET_PORT = "10.96.0.10", 80, 8080
STEPS = [(100, 0), (90, 10), (50, 50), (0, 100)]
PER_STEP = 1000  # connections counted per step
STEP_TIMEOUT = 90.0  # seconds a step may take at most


def version_backends(v1: list, v2: list, w1: int, w2: int) -> List[Backend]:  # type: ignore[type-arg]
    """Every pod of a version gets the version's weight: each version's share
    of the traffic is its weight over the sum."""
    return [Backend(p.ipv4, TARGET_PORT, weight=w1) for p in v1] + [Backend(p.ipv4, TARGET_PORT, weight=w2) for p in v2]


def main() -> int:
    with Lab() as lab:
        client = lab.add_pod("client")
        v1 = [lab.add_pod(f"v1-{i}") for i in range(2)]
        v2 = [lab.add_pod(f"v2-{i}") for i in range(2)]
        for pod in v1 + v2:
            pod.serve(pod.name, tcp=[TARGET_PORT])

        with Balancer() as lb:
            lb.upsert(Service(VIP, PORT, "tcp", version_backends(v1, v2, *STEPS[0])))
            lb.attach(client.cgroup)
            load = Load(
                client, VIP, PORT, max_n=len(STEPS) * PER_STEP * 4, max_seconds=len(STEPS) * STEP_TIMEOUT, pause=0
            )
            print("step  v1/v2  connects  v2 share  failed")
            failed_total = 0
            try:
                for i, (w1, w2) in enumerate(STEPS, 1):
                    # Connections that start after the update returned see
                    # the new weights; those in flight are not counted.
                    lb.upsert(Service(VIP, PORT, "tcp", version_backends(v1, v2, w1, w2)))
                    t0 = time.monotonic()
                    deadline = t0 + STEP_TIMEOUT
                    while len(load.since(t0)) < PER_STEP:
                        if time.monotonic() > deadline or not load.running:
                            raise SystemExit(f"step {i}: the load stopped after {len(load.since(t0))} connections")
                        time.sleep(0.05)
                    step = load.since(t0)[:PER_STEP]
                    failed = [c.who for c in step if c.failed]
                    to_v2 = sum(1 for c in step if c.who.startswith("v2-"))
                    failed_total += len(failed)
                    share = to_v2 / (len(step) - len(failed)) if len(step) > len(failed) else 0.0
                    print(f"{i:4d}  {f'{w1}/{w2}':>5}  {len(step):8d}  {share:8.3f}  {len(failed):6d}", flush=True)
                    for err in failed[:3]:
                        print(f"      failed: {err}")
            finally:
                load.stop()
            # Failures between the counted windows count too.
            failed_total = sum(1 for c in load.connections() if c.failed)
            print(f"failed connections: {failed_total}")
            return 1 if failed_total else 0


if __name__ == "__main__":
    sys.exit(main())
