"""socklb's control plane, measured in a process of its own (so that its RSS is
socklb's and the caller's service list's, nothing else):

    python -m bench.cp_socklb N [--backends 10] [--changes 20]

Prints one JSON object: the time of ``Balancer.sync()`` of N services x
``backends`` backends into an empty balancer, of one backend change through
``upsert()`` and through a full ``sync()`` (what a controller that always passes
the whole list does), the kernel memory of each map and the process's RSS.
No cgroup is attached: nothing is balanced.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from bench.rules import vip
from bench.stats import median
from bench.system import rss_kib
from socklb import Backend, Balancer, Service


def make_services(n: int, backends: int) -> List[Service]:
    # Backend addresses in the pod range; nothing is dialled.
    return [
        Service(
            vip(i),
            80,
            "tcp",
            [Backend(f"10.244.{2 + (i + j) % 200}.{2 + j % 250}", 8080 + j) for j in range(backends)],
        )
        for i in range(n)
    ]


def measure(n: int, backends: int, changes: int, full_syncs: int) -> Dict[str, Any]:
    rss0 = rss_kib()
    services = make_services(n, backends)
    rss_values = rss_kib()
    lb = Balancer(max_services=max(65536, n + 1), max_backends=max(1 << 20, n * backends * 2))
    try:
        rss_lb = rss_kib()
        empty = lb.map_memory()
        gc.collect()
        t0 = time.perf_counter()
        res = lb.sync(services)
        t_sync = time.perf_counter() - t0
        rss_synced = rss_kib()
        full = lb.map_memory()

        # One backend change of the service in the middle, back and forth.
        k = n // 2
        base = services[k]
        alt = base.with_backends([*base.backends[:-1], Backend("10.244.250.250", 9999)])
        times: List[float] = []
        for i in range(changes):
            svc = alt if i % 2 == 0 else base
            t0 = time.perf_counter()
            changed = lb.upsert(svc)
            times.append(time.perf_counter() - t0)
            assert changed
        # The same change through sync() of the whole list.
        sync_times: List[float] = []
        writes: Optional[int] = None
        for i in range(full_syncs):
            services[k] = alt if i % 2 == 0 else base
            t0 = time.perf_counter()
            r = lb.sync(services)
            sync_times.append(time.perf_counter() - t0)
            writes = r.map_writes
        # A sync that changes nothing: the cost of comparing the whole list.
        t0 = time.perf_counter()
        lb.sync(services)
        t_noop = time.perf_counter() - t0
    finally:
        lb.close()
    return {
        "services": n,
        "backends_per_service": backends,
        "sync_from_empty_s": t_sync,
        "sync_map_writes": res.map_writes,
        "upsert_one_change_s": {"median": median(times), "max": max(times) if times else 0.0, "n": len(times)},
        "sync_one_change_s": {"median": median(sync_times), "n": len(sync_times), "map_writes": writes},
        "sync_no_change_s": t_noop,
        "memlock_empty": empty,
        "memlock_full": full,
        "rss_kib": {
            "start": rss0,
            "with_service_values": rss_values,
            "with_balancer": rss_lb,
            "after_sync": rss_synced,
        },
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cp_socklb")
    ap.add_argument("services", type=int)
    ap.add_argument("--backends", type=int, default=10)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--full-syncs", type=int, default=3)
    a = ap.parse_args(argv)
    json.dump(measure(a.services, a.backends, a.changes, a.full_syncs), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
