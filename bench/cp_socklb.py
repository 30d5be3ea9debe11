"""socklb's control plane, measured in a process of its own (so that its RSS is
socklb's and the caller's service list's, nothing else):

    python -m bench.cp_socklb N [--backends 10] [--changes 20]

Prints one JSON object: the time of ``Balancer.sync()`` of N services x
``backends`` backends into an empty balancer, of one backend change through
``upsert()`` and through a full ``sync()`` (what a controller that always passes
the whole list does), the kernel memory of each map and the process's RSS, and (with tracemalloc,
in a second balancer after the timings) the Python memory the balancer keeps
per service apart from the caller's list.  Times are wall clock, with the
process's CPU time beside them (``*_cpu_s``, every thread's: a large sync
writes the kernel's maps from one thread per CPU): on a loaded machine the
wall clock also counts the time other processes held the CPUs, which the
sync's involuntary context switches show (``sync_from_empty_switches``).
No cgroup is attached: nothing is balanced.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
import tracemalloc
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


def bookkeeping_bytes(services: List[Service], backends: int) -> float:
    """Python memory a Balancer keeps per service after a sync of ``services``,
    apart from the list itself (which exists before tracing starts): what
    tracemalloc sees allocated and still alive."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        lb = Balancer(
            max_services=max(65536, len(services) + 1), max_backends=max(1 << 20, len(services) * backends * 2)
        )
        try:
            lb.sync(services)
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            lb.close()
    finally:
        tracemalloc.stop()
    return kept / max(1, len(services))


def measure(n: int, backends: int, changes: int, full_syncs: int, measure_bookkeeping: bool = True) -> Dict[str, Any]:
    rss0 = rss_kib()
    services = make_services(n, backends)
    rss_values = rss_kib()
    lb = Balancer(max_services=max(65536, n + 1), max_backends=max(1 << 20, n * backends * 2))
    try:
        rss_lb = rss_kib()
        empty = lb.map_memory()
        gc.collect()
        load = os.getloadavg()[0]
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        c0, t0 = time.process_time(), time.perf_counter()
        res = lb.sync(services)
        t_sync, c_sync = time.perf_counter() - t0, time.process_time() - c0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
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
        sync_cpu: List[float] = []
        # The same change through sync() of the whole list.
        sync_times: List[float] = []
        writes: Optional[int] = None
        for i in range(full_syncs):
            services[k] = alt if i % 2 == 0 else base
            c0, t0 = time.process_time(), time.perf_counter()
            r = lb.sync(services)
            sync_times.append(time.perf_counter() - t0)
            sync_cpu.append(time.process_time() - c0)
            writes = r.map_writes
        # A sync that changes nothing: the cost of comparing the whole list.
        c0, t0 = time.process_time(), time.perf_counter()
        lb.sync(services)
        t_noop, c_noop = time.perf_counter() - t0, time.process_time() - c0
    finally:
        lb.close()
    bookkeeping = bookkeeping_bytes(services, backends) if measure_bookkeeping else None
    return {
        "services": n,
        "backends_per_service": backends,
        "sync_from_empty_s": t_sync,
        "sync_from_empty_cpu_s": c_sync,
        # Why the wall clock may exceed the CPU time: switches away from a
        # runnable process (other processes held the CPUs) are involuntary;
        # a voluntary one is a wait (a sleep in the kernel, a lock).
        "sync_from_empty_switches": {
            "involuntary": r1.ru_nivcsw - r0.ru_nivcsw,
            "voluntary": r1.ru_nvcsw - r0.ru_nvcsw,
        },
        "loadavg_1m": load,
        "sync_map_writes": res.map_writes,
        "upsert_one_change_s": {"median": median(times), "max": max(times) if times else 0.0, "n": len(times)},
        "sync_one_change_s": {
            "median": median(sync_times),
            "min": min(sync_times) if sync_times else None,
            "cpu_median": median(sync_cpu),
            "n": len(sync_times),
            "map_writes": writes,
        },
        "sync_no_change_s": t_noop,
        "sync_no_change_cpu_s": c_noop,
        "bookkeeping_bytes_per_service": bookkeeping,
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
    ap.add_argument("--full-syncs", type=int, default=5)
    ap.add_argument("--no-tracemalloc", action="store_true", help="skip the bookkeeping measurement")
    a = ap.parse_args(argv)
    json.dump(measure(a.services, a.backends, a.changes, a.full_syncs, not a.no_tracemalloc), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
