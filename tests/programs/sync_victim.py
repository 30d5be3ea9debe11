"""A controller to be SIGKILLed in the middle of a sync: with a pinned balancer
(pin_dir and limits of the JSON spec file argv[1]), sync the services "first",
attach to "cgroup" (if any), print "ready"; on a line on stdin, sync "second"
in one call, printing "syncing" before and "done <seconds> <map writes>" after;
then wait until killed."""

from __future__ import annotations

import json
import sys
import time

from service_json import svc_from_json

from socklb import Balancer


def main(argv: list[str]) -> None:
    with open(argv[1]) as f:
        spec = json.load(f)
    first = [svc_from_json(d) for d in spec["first"]]
    second = [svc_from_json(d) for d in spec["second"]]
    lb = Balancer(pin_dir=spec["pin_dir"], **spec["limits"])
    t = time.monotonic()
    lb.sync(first)
    print(f"synced {time.monotonic() - t:.3f}", flush=True)
    if spec["cgroup"]:
        lb.attach(spec["cgroup"])
    print("ready", flush=True)
    sys.stdin.readline()
    print("syncing", flush=True)
    t = time.monotonic()
    r = lb.sync(second)
    print(f"done {time.monotonic() - t:.3f} {r.map_writes}", flush=True)
    sys.stdin.read()  # until the test ends (or dies)


if __name__ == "__main__":
    main(sys.argv)
