"""The benchmark run: data plane at each scale (modes interleaved over rounds),
hook cost, control plane, memory.  :func:`run` returns the results as a dict
and writes them (JSON, Markdown, plots) to the output directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from bench import report, rules
from bench.build import build
from bench.hook_cost import Floor
from bench.modes import (
    MODES,
    Arm,
    DetachedLab,
    IptablesLab,
    Modes,
    NftablesLab,
    SocklbLab,
    Workload,
    conntrack_count,
    default_pinning,
    direct_targets,
    make_mode,
    run_sliced,
    services_for_scale,
    wait_quiet,
)
from bench.rules import Svc, Table
from bench.stats import median, paired_ratios, sliced_ratio, summarize
from bench.system import bpf_stats, machine_info

__all__ = ["Config", "run"]

Log = Callable[[str], None]


@dataclass
class Config:
    scales: List[int] = field(default_factory=lambda: [1, 1000, 10000, 50000])
    modes: List[str] = field(default_factory=lambda: list(MODES))
    workloads: List[str] = field(default_factory=lambda: ["tcp", "udp"])
    rounds: int = 5
    duration: float = 2.0
    warmup: float = 0.3
    concurrency: int = 2
    req_size: int = 100
    resp_size: int = 100
    backends: int = 4
    server_threads: int = 1
    #: taskset CPU lists (client, servers); "auto": client on the first CPU,
    #: servers on the others; "" for no pinning.
    pin: str = "auto"
    #: Before each measurement wait up to this long for the CPUs to be idle
    #: (other work on the machine is noise); 0: do not wait.
    quiet_wait: float = 2.0
    #: A round is repeated when other processes took more than this share of
    #: the CPUs during one of its runs (0: never).
    max_foreign: float = 0.10
    #: Scales at which socklb's control plane is measured (N x 10 backends).
    control_scales: List[int] = field(default_factory=lambda: [1, 1000, 10000, 50000])
    control: bool = True
    hook_cost: bool = True
    hook_duration: float = 1.0
    #: Hook-cost runs per scale: the average is the median over them (one
    #: interrupt-heavy second of other work inflates a single run).
    hook_repeats: int = 3
    #: Largest scale for which nft loads the whole table in one transaction too.
    nft_single_max: int = 1000
    #: Services per nft transaction (one transaction for N services is O(N^2)).
    nft_chunk: int = 500
    #: Largest scale whose N x 10 iptables/nftables tables are loaded from empty.
    table_cp_max: int = 10000
    #: Largest scale for which a kube-proxy full iptables resync (--noflush over
    #: existing rules) is timed.
    ipt_resync_max: int = 1000
    changes: int = 3
    #: The time-sliced A/B at each scale (bench.modes.run_sliced): socklb,
    #: direct (the socklb pod, a cgroup without socklb), a second direct arm
    #: (the method's own error: should read 1.000), iptables, nftables.
    sliced: bool = True
    slice_ms: float = 2.0
    sliced_duration: float = 20.0
    sliced_blocks: int = 5
    plots: bool = True
    out_dir: str = ""


def _now() -> float:
    return time.monotonic()


def run(cfg: Config, log: Optional[Log] = None) -> Dict[str, Any]:
    """Run the benchmark; returns the results (also written to ``cfg.out_dir``)."""
    say: Log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if os.geteuid() != 0:
        raise PermissionError("the benchmark needs root (network namespaces, cgroups, BPF)")
    for m in cfg.modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; modes are {', '.join(MODES)}")
    started = time.time()
    t_start = _now()
    bins = build()
    results: Dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(),
        "config": asdict(cfg),
        "method": _method(cfg),
        "scales": {},
        "setup": {},
        "hook_cost": {},
        "control_plane": {"socklb": {}, "iptables": {}, "nftables": {}},
        "memory": {},
        "checks": {},
        "sliced": {},
    }
    os.makedirs(cfg.out_dir, exist_ok=True)

    def save() -> None:
        results["wall_s"] = round(_now() - t_start, 1)
        report.write_all(results, cfg.out_dir, plots=False)

    pin = _pinning(cfg.pin)
    results["pinning"] = {"client_cpus": pin[0], "server_cpus": pin[1]} if pin else None
    modes = Modes()
    try:
        if "detached" in cfg.modes and "socklb" not in cfg.modes:
            raise ValueError("the detached mode needs the socklb mode (it runs in the socklb lab)")
        for name in sorted(cfg.modes, key=lambda m: m == "detached"):
            say(f"[bench] building the {name} lab")
            if name == "detached":
                sl = modes.labs["socklb"]
                assert isinstance(sl, SocklbLab)
                modes.labs[name] = DetachedLab(sl)
                continue
            lab_ = make_mode(name, cfg.backends, bins, cfg.server_threads, pin)
            if isinstance(lab_, NftablesLab):
                lab_.chunk = cfg.nft_chunk
            modes.labs[name] = lab_
        # In a pod, the service range is an unreachable route (an untranslated
        # connect() fails at once).  kube-proxy's rules act in the node, so the
        # client of those modes must send service traffic there: drop the route
        # in that client pod (the node keeps its unreachable route).
        for name in ("iptables", "nftables"):
            if name in modes.labs:
                modes.labs[name].client.run(["ip", "route", "del", rules.SERVICE_CIDR])
        order = [m for m in cfg.modes]
        workloads = [
            Workload(p, cfg.duration, cfg.warmup, cfg.concurrency, cfg.req_size, cfg.resp_size) for p in cfg.workloads
        ]
        ips = next(iter(modes.labs.values())).backend_ips if modes.labs else []
        for scale in cfg.scales:
            services, mid = services_for_scale(scale, ips)
            say(f"[bench] scale {scale}: programming {len(services)} service ports into {', '.join(order)}")
            setup: Dict[str, Any] = {}
            for name in order:
                t0 = _now()
                setup[name] = modes.labs[name].program(services, mid)
                setup[name]["wall_s"] = round(_now() - t0, 3)
                say(f"[bench]   {name}: {setup[name]}")
            results["setup"][str(scale)] = setup
            _check_modes(modes, workloads, results, scale, say)
            raw: Dict[str, Dict[str, List[Dict[str, Any]]]] = {m: {w.proto: [] for w in workloads} for m in order}
            noisy: Dict[str, Dict[str, List[Dict[str, Any]]]] = {m: {w.proto: [] for w in workloads} for m in order}
            clean = attempt = 0
            # A round in which other processes took more than max_foreign of the
            # CPUs is set aside and run again (at most `rounds` extra times).
            while clean < cfg.rounds and attempt < 2 * cfg.rounds:
                rot = order[attempt % len(order) :] + order[: attempt % len(order)]
                this: Dict[str, Dict[str, Any]] = {m: {} for m in order}
                for name in rot:
                    for w in workloads:
                        quiet = wait_quiet(cfg.quiet_wait) if cfg.quiet_wait > 0 else None
                        res = modes.labs[name].run_load(w, seed=1000 * scale + 10 * attempt + 1)
                        res["background_busy_before"] = quiet
                        res["round"] = attempt
                        this[name][w.proto] = res
                foreign = max(float(this[m][w.proto]["cpu"]["foreign_share"]) for m in order for w in workloads)
                steal = max(float(this[m][w.proto]["cpu"].get("steal_share", 0.0)) for m in order for w in workloads)
                disturbed = cfg.max_foreign > 0 and foreign > cfg.max_foreign
                for m in order:
                    for w in workloads:
                        this[m][w.proto]["disturbed"] = disturbed
                        (noisy if disturbed else raw)[m][w.proto].append(this[m][w.proto])
                attempt += 1
                clean += not disturbed
                line = "  ".join(
                    f"{m}:{this[m][w.proto]['rps']:.0f}/{this[m][w.proto]['latency_us']['p99']:.0f}us"
                    for w in workloads
                    for m in order
                )
                tag = (
                    f" DISTURBED (other processes and the hypervisor took {foreign:.0%} of the CPUs, "
                    f"steal {steal:.0%}; repeated)"
                    if disturbed
                    else ""
                )
                say(f"[bench]   round {attempt} ({clean}/{cfg.rounds} clean; {','.join(rot)}) {line}{tag}")
            if clean < cfg.rounds:  # too noisy: use every round, and say so
                for m in order:
                    for w in workloads:
                        raw[m][w.proto] = sorted(raw[m][w.proto] + noisy[m][w.proto], key=lambda r: int(r["round"]))
            summary = _scale_summary(raw, order, workloads)
            summary["rounds_clean"] = clean
            summary["rounds_disturbed"] = attempt - clean
            summary["noisy"] = clean < cfg.rounds
            summary["disturbed_raw"] = {
                m: {w.proto: [_no_hist(r) for r in noisy[m][w.proto]] for w in workloads} for m in order
            }
            results["scales"][str(scale)] = summary
            if cfg.sliced and "socklb" in modes.labs:
                results["sliced"][str(scale)] = _sliced(modes, workloads, cfg, scale, say)
            if "socklb" in modes.labs and cfg.hook_cost:
                lab = modes.labs["socklb"]
                assert isinstance(lab, SocklbLab)
                results["hook_cost"][str(scale)] = _hook_cost(lab, workloads, cfg)
                say(f"[bench]   hook cost: {results['hook_cost'][str(scale)]['avg_ns']}")
            if "socklb" in modes.labs:
                results["memory"].setdefault("socklb_dataplane", {})[str(scale)] = setup["socklb"].get("memlock_bytes")
            if cfg.control:
                _control_after_rounds(modes, services, mid, scale, cfg, results, say)
            save()
        if cfg.control:
            _control_from_empty(modes, cfg, results, say)
            save()
        if cfg.control and "socklb" in cfg.modes:
            for n in cfg.control_scales:
                say(f"[bench] socklb control plane: {n} services x 10 backends")
                results["control_plane"]["socklb"][str(n)] = _cp_socklb(n, cfg.changes)
                save()
            say("[bench] socklb control plane against issue 14's targets:")
            for line in report.control_summary(results):
                say(f"[bench] {line}")
    finally:
        problems = modes.close()
        if problems:
            results.setdefault("cleanup_problems", problems)
    results["wall_s"] = round(_now() - t_start, 1)
    report.write_all(results, cfg.out_dir, plots=cfg.plots)
    say(report.summary(results))
    say(f"[bench] done in {results['wall_s']:.0f} s; results in {cfg.out_dir}")
    return results


#: The comparisons a sliced run reports (arm over arm), when both arms ran.
SLICED_PAIRS = (
    ("socklb", "direct"),
    ("direct-aa", "direct"),
    ("socklb", "iptables"),
    ("socklb", "nftables"),
)


def sliced_arms(modes: Modes, proto: str) -> Tuple[List[Arm], List[Arm]]:
    """The arms of a scale's two sliced runs.  First socklb and two direct arms
    in the socklb lab's client pod (the direct ones in sibling cgroups, which
    socklb's programs do not see): arms whose requests take about as long,
    so that what one arm's last request of a slice leaves to the next slice
    (it runs into it) is the same for all.  Then socklb against the client
    pods of the iptables and nftables labs, whose requests take up to 20
    times longer (empty when neither mode runs)."""
    sl = modes.labs["socklb"]
    socklb = Arm("socklb", sl, sl.client, tuple(sl.sliced_targets(proto)))
    near = [
        socklb,
        Arm("direct", sl, sl.client.sibling("direct"), direct_targets(sl, proto)),
        Arm("direct-aa", sl, sl.client.sibling("direct-aa"), direct_targets(sl, proto)),
    ]
    tables = [
        Arm(name, lab, lab.client, tuple(lab.sliced_targets(proto)))
        for name in ("iptables", "nftables")
        if (lab := modes.labs.get(name)) is not None
    ]
    return near, [socklb, *tables] if tables else []


def sliced_summary(run_: Dict[str, Any]) -> Dict[str, Any]:
    """Per arm: throughput, latency and errors; per pair of SLICED_PAIRS: the
    throughput ratio with its 95% interval over the cycles, and the p99 ratio
    (over the whole run and per block)."""
    arms: Dict[str, Any] = run_["arms"]
    out: Dict[str, Any] = {"arms": {}, "vs": {}, "cpu": run_["cpu"], "slice_s": run_["slice_s"]}
    for name, r in arms.items():
        out["arms"][name] = {
            "rps": r["rps"],
            "requests": r["requests"],
            "latency_us": r["latency_us"],
            "errors": r["errors"],
            "errors_by_kind": r["errors_by_kind"],
            "blocks": r["slices"]["blocks"],
        }
    for a, b in SLICED_PAIRS:
        if a not in arms or b not in arms:
            continue
        sa, sb = arms[a]["slices"], arms[b]["slices"]
        lo, hi = max(sa["warmup_cycles"], sb["warmup_cycles"]), min(sa["full_cycles"], sb["full_cycles"])
        # "work": requests, with the part inside the slice of those that outran it.
        wa, wb = sa.get("work", sa["counts"]), sb.get("work", sb["counts"])
        pair = sliced_ratio(wa[lo:hi], wb[lo:hi])
        pa, pb = float(arms[a]["latency_us"]["p99"]), float(arms[b]["latency_us"]["p99"])
        pair["p99_ratio"] = round(pa / pb, 4) if pb else None
        pair["p99_ratio_blocks"] = [
            round(float(x["p99"]) / float(y["p99"]), 4) if float(y["p99"]) else None
            for x, y in zip(sa["blocks"], sb["blocks"])
        ]
        out["vs"][f"{a}/{b}"] = pair
    return out


def _sliced(modes: Modes, workloads: List[Workload], cfg: Config, scale: int, say: Log) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for w in workloads:
        near, tables = sliced_arms(modes, w.proto)
        sw = Workload(w.proto, cfg.sliced_duration, max(w.warmup, 0.5), w.concurrency, w.req_size, w.resp_size)
        if cfg.quiet_wait > 0:
            wait_quiet(cfg.quiet_wait)
        res = sliced_summary(run_sliced(near, sw, cfg.slice_ms / 1000.0, 1000 * scale + 7, cfg.sliced_blocks))
        if tables:
            tw = Workload(w.proto, cfg.sliced_duration / 2, sw.warmup, w.concurrency, w.req_size, w.resp_size)
            if cfg.quiet_wait > 0:
                wait_quiet(cfg.quiet_wait)
            other = sliced_summary(run_sliced(tables, tw, cfg.slice_ms / 1000.0, 1000 * scale + 8, cfg.sliced_blocks))
            res["arms"].update({k: v for k, v in other["arms"].items() if k != "socklb"})
            res["vs"].update(other["vs"])
            res["cpu_tables"] = other["cpu"]
        out[w.proto] = res
        text = "  ".join(
            f"{k} {v['ratio']:.3f} (+-{v['half_width']:.1%}) p99 {v['p99_ratio']:.3f}"
            for k, v in res["vs"].items()
            if v.get("ratio") is not None and v.get("p99_ratio") is not None
        )
        say(f"[bench]   sliced {w.proto}: {text}")
    return out


def _pinning(spec: str) -> Optional[Tuple[str, str]]:
    if spec == "auto":
        return default_pinning()
    if not spec:
        return None
    client, sep, servers = spec.partition("/")
    if not sep or not client or not servers:
        raise ValueError(f"pin must be 'auto', '' or 'CLIENT_CPUS/SERVER_CPUS', not {spec!r}")
    return (client, servers)


def _method(cfg: Config) -> Dict[str, str]:
    return {
        "interleaving": (
            f"{cfg.rounds} rounds; each round runs every mode once (TCP then UDP), the mode order rotating by one "
            "each round; ratios are per-round pairs (median) and totals over all rounds; a round during which "
            f"other processes took more than {cfg.max_foreign:.0%} of the CPUs is set aside and repeated (at most "
            f"{cfg.rounds} extra rounds; if still too few are clean, all rounds are used and the scale is marked noisy)"
        ),
        "labs": (
            "one identical lab per mode (client pod, backend pods with bench/bin/server, node namespace); "
            "iptables/nftables rules stay loaded in their own lab's node for a whole scale, so the other modes run "
            "without netfilter rules or conntrack in their path"
        ),
        "socklb": (
            "Balancer.sync() of the whole table; attached to the socklb lab's client pod cgroup for the whole run"
        ),
        "iptables": (
            "kube-proxy iptables-mode rules (filter + nat), one iptables-restore (iptables-nft backend) into empty "
            "tables; the client pod's unreachable service route is removed so service traffic goes to the node"
        ),
        "nftables": (
            f"kube-proxy nftables-mode table 'ip kube-proxy', loaded with nft -f in transactions of {cfg.nft_chunk} "
            "services (one transaction for the whole table is O(N^2) in the kernel)"
        ),
        "pinning": (
            "the load generator runs on the first CPU and the servers on the others (taskset), so that run-to-run "
            "placement noise does not swamp the differences; the client CPU does the client's system calls, the "
            "socklb hooks and the forward path of requests (veth transmit runs the receive path in softirq on the "
            "sending CPU), the server CPU the server's calls and the path of the replies"
        ),
        "direct": "the client picks a backend pod at random per TCP connection / per UDP socket (thread)",
        "sliced": (
            f"the targets' ratios: after the rounds, per workload, a run of {cfg.sliced_duration:g} s in which a load "
            "generator per arm (socklb; direct and direct-aa: the socklb lab's client pod in two sibling cgroups that "
            "socklb is not attached to, dialling the backend pods) time-shares the client CPU in "
            f"slices of {cfg.slice_ms:g} ms, each cycle giving every arm one slice in a random order, so that the "
            "machine's noise (which comes in phases of milliseconds to seconds) hits every arm alike; a ratio is the "
            "ratio of the arms' requests over all cycles, with a 95% interval from the per-cycle spread (then a run "
            f"of {cfg.sliced_duration / 2:g} s of socklb, iptables and nftables the same way: their requests take up "
            "to 20 times longer, and what an arm's last request of a slice takes from the next slice would otherwise "
            "weigh on the direct arms' tails unevenly); direct-aa "
            "against direct measures the method's own error, and a run where it is not 1 within 1% is not judged"
        ),
        "tables": (
            "N TCP services 10.96.x.y:80 plus the UDP services :53 and :54-:57; the measured TCP and UDP services are "
            "in the middle with one endpoint per backend pod; :54+i, which the sliced A/B's UDP thread i dials, has "
            "one, pod i (a UDP socket keeps its backend, so with several a run would hang on which pods the client's "
            "sockets happened to share); the other services have 2 endpoints each (iptables-nft cannot load "
            "50,000 x 10 in practical time); the control-plane tables are N x 10"
        ),
        "tcp": "TCP_CRR-like: per request socket/connect/send/recv response/recv FIN/close; server closes first",
        "udp": "UDP_RR-like: one unconnected socket per client thread, sendto/recvfrom per request",
    }


def _check_modes(modes: Modes, workloads: List[Workload], results: Dict[str, Any], scale: int, say: Log) -> None:
    """A short run per mode and workload before measuring: each must work."""
    checks: Dict[str, Any] = {}
    for name, lab in modes.labs.items():
        for w in workloads:
            probe = Workload(w.proto, 0.2, 0.0, 1, w.req_size, w.resp_size)
            failures: List[Dict[str, Any]] = []
            # A failed probe is tried again (twice, after a pause) before the
            # mode is declared broken, and the failures are kept in the results.
            for attempt in range(3):
                ct0 = conntrack_count(lab)
                res = lab.run_load(probe, seed=7 + attempt)
                ct1 = conntrack_count(lab)
                ok = res["requests"] > 0 and res["errors"] == 0
                if ok:
                    break
                failures.append({"requests": res["requests"], "errors": res["errors_by_kind"]})
                time.sleep(0.5)
            checks[f"{name}/{w.proto}"] = {
                "ok": ok,
                "requests": res["requests"],
                "errors": res["errors_by_kind"],
                "node_conntrack_entries": [ct0, ct1],
                "failed_attempts": failures,
            }
            if not ok:
                raise RuntimeError(f"{name}/{w.proto} at scale {scale} does not work: {failures}")
    results["checks"][str(scale)] = checks
    say(f"[bench]   checks passed: {', '.join(checks)}")


def _no_hist(r: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in r.items() if k != "hist"}


def _scale_summary(
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]], order: Sequence[str], workloads: List[Workload]
) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for w in workloads:
        per: Dict[str, Any] = {}
        for m in order:
            s = summarize(raw[m][w.proto])
            s["raw"] = [{k: v for k, v in r.items() if k != "hist"} for r in raw[m][w.proto]]
            per[m] = s
        for m in order:
            for base in ("direct", "detached", "iptables", "nftables"):
                if base in per and base != m:
                    rr = paired_ratios(raw[m][w.proto], raw[base][w.proto], "rps")
                    pr = paired_ratios(raw[m][w.proto], raw[base][w.proto], "p99")
                    per[m][f"vs_{base}"] = {
                        "rps_ratio": per[m]["rps"] / per[base]["rps"] if per[base]["rps"] else None,
                        "rps_ratio_rounds_median": median(rr),
                        "rps_ratio_rounds": [round(x, 4) for x in rr],
                        "p99_ratio": (
                            per[m]["latency_us"]["p99"] / per[base]["latency_us"]["p99"]
                            if per[base]["latency_us"].get("p99")
                            else None
                        ),
                        "p99_ratio_rounds_median": median(pr),
                    }
        out[w.proto] = per
    return out


def _hook_cost(lab: SocklbLab, workloads: List[Workload], cfg: Config) -> Dict[str, Any]:
    """Average run time of each socklb program, from the kernel's BPF statistics,
    in extra runs (statistics cost two clock reads per program run, so the
    compared rounds run without them): the median over ``hook_repeats`` runs,
    with the lowest and every run kept."""
    reps = [_hook_cost_once(lab, workloads, cfg) for _ in range(max(cfg.hook_repeats, 1))]
    out = dict(reps[len(reps) // 2])
    avg: Dict[str, Any] = {}
    low: Dict[str, Any] = {}
    for name in reps[0]["avg_ns"]:
        vals = [r["avg_ns"][name] for r in reps if r["avg_ns"].get(name) is not None]
        avg[name] = median(vals) if vals else None
        low[name] = min(vals) if vals else None
    out["avg_ns"], out["min_ns"] = avg, low
    out["repeats"] = [{"avg_ns": r["avg_ns"], "run_cnt": r["run_cnt"]} for r in reps]
    return out


def _hook_cost_once(lab: SocklbLab, workloads: List[Workload], cfg: Config) -> Dict[str, Any]:
    """One hook-cost run, with empty connect4/sendmsg4 programs attached after
    socklb's (bench.hook_cost.Floor): what the statistics cost by themselves on
    this machine, the "floor_*" rows."""
    runs: Dict[str, Any] = {}
    with Floor(lab.client.cgroup) as floor:

        def sample() -> Dict[str, Tuple[int, int]]:
            out = {s.name: (s.run_cnt, s.run_time_ns) for s in lab.balancer.program_stats()}
            out.update(floor.stats())
            return out

        with bpf_stats() as st:
            before = sample()
            for w in workloads:
                short = Workload(w.proto, cfg.hook_duration, 0.1, w.concurrency, w.req_size, w.resp_size)
                r = lab.run_load(short, seed=99)
                runs[w.proto] = {"rps": r["rps"], "p99_us": r["latency_us"]["p99"], "errors": r["errors"]}
            after = sample()
    avg: Dict[str, Any] = {}
    counts: Dict[str, int] = {}
    for name, (cnt1, ns1) in after.items():
        cnt0, ns0 = before.get(name, (0, 0))
        counts[name] = cnt1 - cnt0
        avg[name] = round((ns1 - ns0) / (cnt1 - cnt0), 1) if cnt1 > cnt0 else None
    return {"how": st.how, "avg_ns": avg, "run_cnt": counts, "runs": runs}


def _changed(s: Svc, flip: bool) -> Svc:
    eps = s.endpoints[:-1] + ((("10.244.250.2", 9999),) if flip else s.endpoints[-1:])
    return Svc(s.namespace, s.name, s.ip, s.port, s.protocol, eps)


def _control_after_rounds(
    modes: Modes, services: List[Svc], mid: int, scale: int, cfg: Config, results: Dict[str, Any], say: Log
) -> None:
    """One backend change with this scale's table loaded, the way kube-proxy
    applies it: iptables partial sync, nftables one transaction."""
    k = mid - 1 if mid >= 1 else mid  # a filler next to the measured service
    setup = results["setup"][str(scale)]
    if "iptables" in modes.labs:
        lab = modes.labs["iptables"]
        entry: Dict[str, Any] = {
            "services": scale,
            "dataplane_table_restore_s": setup["iptables"]["restore_s"],
            "dataplane_table_lines": setup["iptables"]["lines"],
        }
        cur = list(services)
        times = []
        for i in range(cfg.changes):
            old = cur[k]
            cur[k] = _changed(services[k], i % 2 == 0)
            text = rules.iptables_partial(Table(cur), cur[k], old)
            t0 = time.perf_counter()
            lab.lab.node.run(["iptables-restore", "--noflush"], input=text, timeout=1800)
            times.append(time.perf_counter() - t0)
        entry["partial_sync_one_change_s"] = {"median": median(times), "max": max(times), "n": len(times)}
        if scale <= cfg.ipt_resync_max:
            text = rules.iptables_restore(Table(cur))
            t0 = time.perf_counter()
            lab.lab.node.run(["iptables-restore", "--noflush"], input=text, timeout=1800)
            entry["full_sync_existing_rules_s"] = time.perf_counter() - t0
        results["control_plane"]["iptables"].setdefault(str(scale), {}).update(entry)
        say(f"[bench]   iptables one change: {entry['partial_sync_one_change_s']}")
    if "nftables" in modes.labs:
        nlab = modes.labs["nftables"]
        nentry: Dict[str, Any] = {
            "services": scale,
            "dataplane_table_load_s": setup["nftables"]["load_s"],
            "dataplane_table_transactions": setup["nftables"]["transactions"],
        }
        cur = list(services)
        times = []
        for i in range(cfg.changes):
            old = cur[k]
            cur[k] = _changed(services[k], i % 2 == 0)
            text = rules.nft_service_update(cur[k], old)
            t0 = time.perf_counter()
            nlab.lab.node.run(["nft", "-f", "-"], input=text, timeout=1800)
            times.append(time.perf_counter() - t0)
        nentry["one_change_s"] = {"median": median(times), "max": max(times), "n": len(times)}
        results["control_plane"]["nftables"].setdefault(str(scale), {}).update(nentry)
        say(f"[bench]   nftables one change: {nentry['one_change_s']}")


def _control_from_empty(modes: Modes, cfg: Config, results: Dict[str, Any], say: Log) -> None:
    """N services x 10 backends programmed from nothing, for iptables and
    nftables (scales up to ``cfg.table_cp_max``; see the notes for beyond)."""
    ips = next(iter(modes.labs.values())).backend_ips
    for n in cfg.control_scales:
        if n > cfg.table_cp_max:
            continue
        services, _ = services_for_scale(n, ips, filler_endpoints=10)
        services = [s for s in services if s.protocol == "tcp"]
        if "iptables" in modes.labs:
            lab = modes.labs["iptables"]
            assert isinstance(lab, IptablesLab)
            lab.clear()
            text = rules.iptables_restore(Table(services))
            t0 = time.perf_counter()
            lab.lab.node.run(["iptables-restore"], input=text, timeout=1800)
            t = time.perf_counter() - t0
            lab.clear()
            e = results["control_plane"]["iptables"].setdefault(str(n), {"services": n})
            e["restore_from_empty_x10_s"] = t
            e["restore_from_empty_x10_lines"] = text.count("\n")
            say(f"[bench] iptables {n} x 10 from empty: {t:.3f} s")
        if "nftables" in modes.labs:
            nlab = modes.labs["nftables"]
            assert isinstance(nlab, NftablesLab)
            e = results["control_plane"]["nftables"].setdefault(str(n), {"services": n})
            if n <= cfg.nft_single_max:
                nlab.clear()
                text = rules.nft_ruleset(Table(services))
                t0 = time.perf_counter()
                nlab.lab.node.run(["nft", "-f", "-"], input=text, timeout=1800)
                e["load_from_empty_x10_one_transaction_s"] = time.perf_counter() - t0
            nlab.clear()
            texts = rules.nft_transactions(services, cfg.nft_chunk)
            t0 = time.perf_counter()
            for text in texts:
                nlab.lab.node.run(["nft", "-f", "-"], input=text, timeout=1800)
            e["load_from_empty_x10_s"] = time.perf_counter() - t0
            e["load_from_empty_x10_transactions"] = len(texts)
            nlab.clear()
            say(f"[bench] nftables {n} x 10 from empty: {e['load_from_empty_x10_s']:.3f} s")


def _cp_socklb(n: int, changes: int) -> Dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    paths = [root, *(p for p in sys.path if p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    r = subprocess.run(
        [sys.executable, "-m", "bench.cp_socklb", str(n), "--changes", str(max(changes, 4) * 4)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=root,
        env=env,
        check=False,
    )
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-2000:]}
    out: Dict[str, Any] = json.loads(r.stdout)
    return out


def dump(results: Dict[str, Any]) -> str:
    return json.dumps(results, indent=1, sort_keys=False)
