"""Command line of the benchmark: ``python -m bench [options]``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Optional, Sequence

from bench.build import BENCH_DIR
from bench.modes import MODES
from bench.runner import Config, run

__all__ = ["main", "parse_args"]


def _ints(text: str) -> List[int]:
    try:
        out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not out or any(not 1 <= x <= 65000 for x in out):
        raise argparse.ArgumentTypeError("scales must be in 1..65000")
    return out


def _list(allowed: Sequence[str]) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        out = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in out if x not in allowed]
        if bad or not out:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return out

    return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> Config:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="socklb against kube-proxy-style iptables and nftables, and against direct dialling.",
    )
    d = Config()
    ap.add_argument(
        "--scales", type=_ints, default=d.scales, help="services in the tables (default 1,1000,10000,50000)"
    )
    ap.add_argument("--modes", type=_list(MODES), default=d.modes, help=f"modes (default {','.join(MODES)})")
    ap.add_argument("--workloads", type=_list(("tcp", "udp")), default=d.workloads, help="tcp,udp (default both)")
    ap.add_argument("--rounds", type=int, default=d.rounds, help="rounds of interleaved modes (default 5)")
    ap.add_argument("--duration", type=float, default=d.duration, help="seconds per measurement (default 2)")
    ap.add_argument("--warmup", type=float, default=d.warmup, help="warm-up seconds before each (default 0.3)")
    ap.add_argument("--concurrency", type=int, default=d.concurrency, help="client threads (default 2)")
    ap.add_argument("--req-size", type=int, default=d.req_size, help="request bytes (default 100)")
    ap.add_argument("--resp-size", type=int, default=d.resp_size, help="response bytes (default 100)")
    ap.add_argument("--backends", type=int, default=d.backends, help="backend pods (default 4)")
    ap.add_argument(
        "--pin",
        default=d.pin,
        help="CLIENT_CPUS/SERVER_CPUS for taskset, 'auto' (default: client on the first CPU, "
        "servers on the rest) or '' for none",
    )
    ap.add_argument("--control-scales", type=_ints, default=d.control_scales, help="control-plane scales")
    ap.add_argument("--no-control", action="store_true", help="skip the control-plane measurements")
    ap.add_argument("--no-hook-cost", action="store_true", help="skip the BPF statistics runs")
    ap.add_argument(
        "--hook-repeats", type=int, default=d.hook_repeats, help="hook-cost runs per scale, median kept (default 3)"
    )
    ap.add_argument("--no-sliced", action="store_true", help="skip the time-sliced A/B the targets are judged on")
    ap.add_argument("--slice-ms", type=float, default=d.slice_ms, help="slice of the sliced A/B, ms (default 2)")
    ap.add_argument(
        "--sliced-duration",
        type=float,
        default=d.sliced_duration,
        help="seconds of each sliced A/B run, shared by its arms (default 20)",
    )
    ap.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    ap.add_argument("--changes", type=int, default=d.changes, help="one-change repetitions (default 3)")
    ap.add_argument(
        "--max-foreign",
        type=float,
        default=d.max_foreign,
        help="repeat a round when other processes took more than this share of the CPUs (default 0.10; 0: never)",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=d.quiet_wait,
        help="seconds to wait at most for idle CPUs before each measurement (default 2; 0: never)",
    )
    ap.add_argument("--nft-chunk", type=int, default=d.nft_chunk, help="services per nft transaction (default 500)")
    ap.add_argument(
        "--table-cp-max", type=int, default=d.table_cp_max, help="largest N x 10 iptables/nft load (default 10000)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="a short look: scales 1,1000, 2 rounds of 1 s, control plane at 1,1000"
    )
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "results"), help="output directory (bench/results)")
    a = ap.parse_args(argv)
    cfg = Config(
        scales=a.scales,
        modes=a.modes,
        workloads=a.workloads,
        rounds=a.rounds,
        duration=a.duration,
        warmup=a.warmup,
        concurrency=a.concurrency,
        req_size=a.req_size,
        resp_size=a.resp_size,
        backends=a.backends,
        control_scales=a.control_scales,
        control=not a.no_control,
        hook_cost=not a.no_hook_cost,
        hook_repeats=a.hook_repeats,
        sliced=not a.no_sliced,
        slice_ms=a.slice_ms,
        sliced_duration=a.sliced_duration,
        plots=not a.no_plots,
        changes=a.changes,
        quiet_wait=a.quiet_wait,
        max_foreign=a.max_foreign,
        nft_chunk=a.nft_chunk,
        table_cp_max=a.table_cp_max,
        out_dir=a.out,
        pin=a.pin,
    )
    if a.quick:
        cfg.scales, cfg.rounds, cfg.duration, cfg.control_scales = [1, 1000], 2, 1.0, [1, 1000]
        cfg.sliced_duration = 5.0
    for name, v, lo, hi in (
        ("rounds", cfg.rounds, 1, 100),
        ("concurrency", cfg.concurrency, 1, 64),
        ("backends", cfg.backends, 1, 64),
        ("changes", cfg.changes, 1, 1000),
    ):
        if not lo <= v <= hi:
            ap.error(f"--{name} must be in {lo}..{hi}")
    if not 0.1 <= cfg.slice_ms <= 1000 or not 1 <= cfg.sliced_duration <= 600:
        ap.error("--slice-ms must be in 0.1..1000 and --sliced-duration in 1..600 s")
    if not 0.05 <= cfg.duration <= 600 or not 0 <= cfg.warmup <= 60:
        ap.error("--duration must be in 0.05..600 s and --warmup in 0..60 s")
    if not 16 <= cfg.req_size <= 65000 or not 16 <= cfg.resp_size <= 65000:
        ap.error("--req-size and --resp-size must be in 16..65000")
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench: needs root (network namespaces, cgroups, BPF)", file=sys.stderr)
        return 2
    run(cfg)
    return 0
