"""Own a pinned balancer (argv[1]) holding 10 services 10.96.7.1..10:80/tcp,
print "ready <pid>", then rewrite the first one in a loop: its backends swap
between two disjoint sets, so every rewrite swaps in a new list and deletes
the old list and the removed backends.  Stops when stdin closes, or after
argv[2] seconds (bounded even if the test dies); prints "rewrites N"."""

from __future__ import annotations

import select
import sys
import time

from socklb import Backend, Balancer, Service


def svc(i: int, first: int) -> Service:
    return Service(f"10.96.7.{i}", 80, "tcp", [Backend(f"10.244.7.{first + j}", 8080) for j in range(3)])


def main(argv: list[str]) -> None:
    pin_dir, seconds = argv[1], float(argv[2])
    lb = Balancer(pin_dir=pin_dir, max_services=64, max_backends=256)
    lb.sync([svc(i, 10 * i) for i in range(1, 11)])
    print("ready", flush=True)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        lb.upsert(svc(1, 100 + 10 * (n % 2)))
        n += 1
        if n % 32 == 0 and select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
            break
    print("rewrites", n, flush=True)
    lb.close()


if __name__ == "__main__":
    main(sys.argv)
