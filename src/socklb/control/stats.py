"""What the datapath counted: per-CPU counters, program statistics, raw maps."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from socklb._native import lib, possible_cpus
from socklb._native.abi import U32
from socklb.datapath.live import Datapath, Map

__all__ = [
    "COUNTERS",
    "ProgramStats",
    "WriteStats",
    "add_counters",
    "read_counters",
    "read_selections",
    "program_stats",
    "dump",
]

WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the update-duration histogram (socklb.ops.metrics)."""

COUNTERS: Dict[str, int] = {
    name.lower(): int(getattr(lib, f"SOCKLB_CNT_{name}"))
    for name in (
        "CONNECT",
        "SENDMSG",
        "RECVMSG",
        "GETPEERNAME",
        "NO_BACKEND",
        "RETRY",
        "AFFINITY_HIT",
        "STICKY_HIT",
        "TERMINATED",
        "CONNECT6",
        "SENDMSG6",
        "RECVMSG6",
        "GETPEERNAME6",
        "TERMINATED_TCP",
        "NO_STATE",
        "UDP_EVICTED",
        "SOCK_TCP_FULL",
    )
}
"""Counter name -> index in the per-CPU ``counters`` array (SOCKLB_CNT_*)."""
assert sorted(COUNTERS.values()) == list(range(lib.SOCKLB_CNT_MAX)), "a SOCKLB_CNT_* counter has no name"


@dataclass(frozen=True)
class ProgramStats:
    """Kernel statistics of one program (counted while kernel.bpf_stats_enabled=1)."""

    name: str
    id: int
    run_cnt: int
    run_time_ns: int

    @property
    def avg_ns(self) -> float:
        return self.run_time_ns / self.run_cnt if self.run_cnt else 0.0


class WriteStats:
    """Durations of a balancer's updates (``upsert``, ``remove``, ``sync``):
    a histogram over :data:`WRITE_BUCKETS`, and when the last one succeeded.
    Guarded by the balancer's lock."""

    def __init__(self) -> None:
        self.buckets = [0] * len(WRITE_BUCKETS)
        self.count = 0
        self.sum = 0.0
        self.failures = 0
        self.last_success: Optional[float] = None
        """time.time() of the last update that succeeded."""

    def observe(self, seconds: float, ok: bool) -> None:
        self.count += 1
        self.sum += seconds
        for i, le in enumerate(WRITE_BUCKETS):
            if seconds <= le:
                self.buckets[i] += 1
        if ok:
            self.last_success = time.time()
        else:
            self.failures += 1


def read_counters(counters: Map) -> Dict[str, int]:
    """Each counter summed over the possible CPUs."""
    ncpu = possible_cpus()
    out = {}
    for name, idx in COUNTERS.items():
        raw = counters.lookup(U32.pack(idx), 8 * ncpu) or b""
        out[name] = sum(int.from_bytes(raw[i : i + 8], sys.byteorder) for i in range(0, len(raw), 8))
    # The IPv6 programs count in their own slot only (one update per
    # event): a hook's total is both.
    for hook in ("connect", "sendmsg", "recvmsg", "getpeername"):
        out[hook] += out[hook + "6"]
    return out


def add_counters(counters: Map, **amounts: int) -> None:
    """Add to the counters the control plane keeps (``terminated``,
    ``terminated_tcp``), in CPU 0's slot, which the datapath never writes for them."""
    ncpu = possible_cpus()
    for name, n in amounts.items():
        if not n:
            continue
        key = U32.pack(COUNTERS[name])
        raw = bytearray(counters.lookup(key, 8 * ncpu) or bytes(8 * ncpu))
        raw[0:8] = (int.from_bytes(raw[0:8], sys.byteorder) + n).to_bytes(8, sys.byteorder)
        counters.update(key, bytes(raw), 1)


def read_selections(selections: Map, cap: int) -> Dict[int, int]:
    """Backend id -> times the datapath chose it, summed over the possible CPUs."""
    ncpu = possible_cpus()
    out = {}
    for k in selections.keys(cap):
        raw = selections.lookup(k, 8 * ncpu)
        if raw is not None:
            out[U32.unpack(k)[0]] = sum(int.from_bytes(raw[i : i + 8], sys.byteorder) for i in range(0, len(raw), 8))
    return out


def program_stats(datapath: Datapath) -> List[ProgramStats]:
    return [ProgramStats(*row) for row in datapath.program_stats()]


def dump(maps: Dict[Map, int]) -> Dict[str, Dict[bytes, bytes]]:
    """Raw contents of each map (walking at most the given number of keys)."""
    return {m.name: dict(m.items(cap)) for m, cap in maps.items()}
