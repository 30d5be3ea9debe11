"""What the datapath counted: per-CPU counters, program statistics, raw maps."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Dict, List

from ._core import lib, possible_cpus
from .abi import U32
from .datapath import Datapath, Map

__all__ = ["COUNTERS", "ProgramStats", "read_counters", "program_stats", "dump"]

COUNTERS: Dict[str, int] = {
    name.lower(): int(getattr(lib, f"SOCKLB_CNT_{name}"))
    for name in ("CONNECT", "SENDMSG", "RECVMSG", "GETPEERNAME", "NO_BACKEND", "RETRY", "AFFINITY_HIT", "STICKY_HIT")
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


def read_counters(counters: Map) -> Dict[str, int]:
    """Each counter summed over the possible CPUs."""
    ncpu = possible_cpus()
    out = {}
    for name, idx in COUNTERS.items():
        raw = counters.lookup(U32.pack(idx), 8 * ncpu) or b""
        out[name] = sum(int.from_bytes(raw[i : i + 8], sys.byteorder) for i in range(0, len(raw), 8))
    return out


def program_stats(datapath: Datapath) -> List[ProgramStats]:
    return [ProgramStats(*row) for row in datapath.program_stats()]


def dump(maps: Dict[Map, int]) -> Dict[str, Dict[bytes, bytes]]:
    """Raw contents of each map (walking at most the given number of keys)."""
    return {m.name: dict(m.items(cap)) for m, cap in maps.items()}
