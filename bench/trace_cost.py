"""Cost of tracing on cgroup/connect4: translated TCP connects with tracing
off (no reader: the lease is 0) and on (a reader consuming the ring buffer).

    .venv/bin/python -m bench.trace_cost [-n 10000] [--rounds 5]

Builds a lab (client pod, one backend pod) and a pinned balancer (its own
pin directory below /sys/fs/bpf, removed at the end), programs one TCP
service and, with kernel BPF statistics on, makes ``n`` connects to it per
round, the two modes interleaved round by round so machine noise spreads
over both.  Prints the median over rounds of connect4's average run time per
call (ns) for each mode, and the events the reader got.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import uuid
from typing import Dict, List, Optional, Sequence

from bench.connect_cost import CLIENT, _connect4
from bench.system import bpf_stats
from socklb import Backend, Balancer, Service
from socklb.ops.trace import Tracer
from socklb.testing.lab import Lab


def measure(n: int, rounds: int) -> Dict[str, object]:
    out: Dict[str, List[float]] = {"off": [], "on": []}
    events = 0
    pin_dir = f"/sys/fs/bpf/socklb-bench-{uuid.uuid4().hex[:12]}"
    with Lab() as lab:
        lb = Balancer(pin_dir=pin_dir)
        try:
            client, web = lab.add_pod("client"), lab.add_pod("web")
            web.serve("web", tcp=[8080])
            lb.upsert(Service("10.96.0.10", 80, "tcp", [Backend(web.ipv4, 8080)]))
            lb.attach(client.cgroup)
            for _ in range(rounds):
                for mode in ("off", "on"):
                    stop = threading.Event()
                    got: List[int] = []
                    reader = None
                    if mode == "on":
                        tracer = Tracer(pin_dir)

                        def consume(t: Tracer = tracer, stop: threading.Event = stop, got: List[int] = got) -> None:
                            while not stop.is_set():
                                got.append(len(t.poll(0.05)))

                        reader = threading.Thread(target=consume, daemon=True)
                        reader.start()
                    try:
                        with bpf_stats():
                            c0, t0 = _connect4(lb)
                            client.python(CLIENT, "10.96.0.10", "80", str(n), "tcp", timeout=300)
                            c1, t1 = _connect4(lb)
                    finally:
                        stop.set()
                        if reader is not None:
                            reader.join(10)
                            tracer.close()
                    if c1 - c0 < n:
                        raise SystemExit(f"connect4 ran {c1 - c0} times for {n} connects")
                    out[mode].append((t1 - t0) / (c1 - c0))
                    events += sum(got)
        finally:
            lb.destroy()
    return {
        **{
            m: {"median_ns": round(statistics.median(v), 1), "rounds_ns": [round(x, 1) for x in v]}
            for m, v in out.items()
        },
        "events_read": events,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.trace_cost")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    json.dump(measure(a.n, a.rounds), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
