"""Hitless restarts: pin the state, exit, adopt it again.

Run as root:  .venv/bin/python examples/restart.py

A balancer made with ``pin_dir`` leaves balancing running when its process
exits (or is killed); ``Balancer.open`` adopts services and attachments, and
swaps in this version's programs without a moment of downtime.
"""

from __future__ import annotations

import json
import sys
import uuid

from socklb import Backend, Balancer, Service
from socklb.testing.lab import Lab

PIN_DIR = f"/sys/fs/bpf/socklb-example-{uuid.uuid4().hex[:8]}"


def main() -> None:
    with Lab() as lab:
        client, web = lab.add_pod("client"), lab.add_pod("web")
        web.serve("web", tcp=[8080])

        def dial() -> list[str]:
            argv = [sys.executable, "-m", "socklb.testing.client", "tcp", "10.96.0.10", "80", "-n", "3"]
            return list(json.loads(client.run(argv).stdout)["served"])

        svc = Service("10.96.0.10", 80, "tcp", [Backend(web.ipv4, 8080)])
        lb = Balancer(pin_dir=PIN_DIR)
        try:
            lb.upsert(svc)
            lb.attach(client.cgroup)
            lb.close()  # the process could exit here: balancing goes on
            print("closed; connections still go to", dial())

            lb = Balancer.open(PIN_DIR)
            print("adopted services:", [str(s) for s in lb.services()], "attachments:", len(lb.attachments()))
            print("a sync of the same set changes", lb.sync([svc]).map_writes, "map entries")
        finally:
            lb.destroy()  # detach and remove every pin
        print("destroyed; pins removed")


if __name__ == "__main__":
    main()
