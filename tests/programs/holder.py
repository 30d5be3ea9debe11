"""Own a pinned balancer in another process: program the services of the JSON
spec (argv[1]: pin_dir, services, cgroup, then), attach to its cgroup, print
"ready <pid>", then sleep until killed (or exit, or close and exit).

Run in the host namespace: it only programs maps and attaches to the cgroup it
is given; it never opens a socket to a service."""

from __future__ import annotations

import json
import os
import sys

from service_json import svc_from_json

from socklb import Balancer


def main(argv: list[str]) -> None:
    spec = json.loads(argv[1])
    lb = Balancer(pin_dir=spec["pin_dir"])
    for d in spec["services"]:
        lb.upsert(svc_from_json(d))
    if spec.get("cgroup"):
        lb.attach(spec["cgroup"])
    print("ready", os.getpid(), flush=True)
    then = spec.get("then", "sleep")
    if then == "exit":
        sys.exit(0)  # a normal interpreter exit, the balancer still open
    if then == "close-exit":
        lb.close()
        sys.exit(0)
    sys.stdin.read()  # until the test kills it (or ends, or dies)


if __name__ == "__main__":
    main(sys.argv)
