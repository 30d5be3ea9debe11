"""Where a TCP CRR request through a VIP spends CPU that a direct one does not.

    .venv/bin/python -m bench.crr_profile [--duration 4] [--rounds 3] [--services 1]

One socklb lab (client pod pinned to the first CPU, servers on the others),
rounds alternating between the balancer attached and the client dialling the
VIP, and the balancer detached and the client dialling the backend pods (the
same pods, servers and placement).  Each run records the load generator with
``perf record -e cpu-clock -g`` (software clock: a VM has no PMU) and reports,
per request, the client's CPU time in groups of kernel symbols: the socklb
programs, the cgroup BPF glue, socket locking, the rest of connect(), and the
total.  A difference the groups do not account for is placement and noise.
Needs ``perf`` (Debian: linux-perf); prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from bench.build import build
from bench.modes import DetachedLab, SocklbLab, Workload, default_pinning, services_for_scale

#: Symbol groups (regular expressions on kernel symbol names).
GROUPS = {
    "socklb programs": r"^bpf_prog_.*socklb",
    "cgroup BPF glue": r"^(__cgroup_bpf_run_filter|bpf_prog_run|__bpf_prog_enter|__bpf_prog_exit|migrate_|"
    r"bpf_get_socket_cookie|__sock_gen_cookie|bpf_skc_to|bpf_map_|htab_|array_map|bpf_ktime|ktime_get)",
    "socket lock": r"^(lock_sock|release_sock|__release_sock|_raw_spin_lock_bh|_raw_spin_unlock_bh)",
}
PERIOD_HZ = 10000


def _perf() -> str:
    found = shutil.which("perf") or shutil.which("perf", path="/usr/sbin:/usr/bin")
    if not found:
        raise SystemExit("perf is needed (apt-get install linux-perf)")
    return found


def _profile(lab: SocklbLab, mode: Any, w: Workload, out: str) -> Dict[str, Any]:
    """One load run under perf; CPU µs per request by symbol group."""
    perf = _perf()
    argv = [lab.bins["loadgen"], "--proto", "tcp", "--duration", repr(w.duration), "--warmup", "0.2"]
    argv += ["--concurrency", str(w.concurrency)]
    for t in mode.targets("tcp"):
        argv += ["--target", t]
    if lab.pin:
        argv = ["taskset", "-c", lab.pin[0], *argv]
    mode.before_run()
    try:
        r = lab.client.run(
            [perf, "record", "-q", "-e", "cpu-clock", "-F", str(PERIOD_HZ), "-g", "-o", out, "--", *argv]
        )
    finally:
        mode.after_run()
    res = json.loads(r.stdout)
    done = max(int(res["completed_total"]), 1)
    rep = subprocess.run(
        [perf, "report", "-i", out, "--no-children", "--sort", "sym", "-q", "--stdio", "-g", "none"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = subprocess.run([perf, "script", "-i", out, "-F", "time"], capture_output=True, text=True, check=True)
    samples = sum(1 for line in total.stdout.splitlines() if line.strip())
    groups = {g: 0.0 for g in GROUPS}
    top: List[List[Any]] = []
    for line in rep.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[([k.])\]\s+(\S+)", line)
        if not m:
            continue
        share, sym = float(m.group(1)) / 100, m.group(3)
        if len(top) < 15:
            top.append([sym, round(share * 100, 2)])
        for g, rx in GROUPS.items():
            if re.search(rx, sym):
                groups[g] += share
                break
    us_per_req = samples * 1e6 / PERIOD_HZ / done
    return {
        "rps": res["rps"],
        "p99_us": res["latency_us"]["p99"],
        "requests": done,
        "client_cpu_us_per_req": round(us_per_req, 2),
        "groups_us_per_req": {g: round(v * us_per_req, 3) for g, v in groups.items()},
        "top": top,
    }


def run(duration: float, rounds: int, services: int, concurrency: int) -> Dict[str, Any]:
    bins = build()
    pin = default_pinning()
    lab = SocklbLab(4, bins, 1, pin)
    try:
        table, mid = services_for_scale(services, lab.backend_ips)
        lab.program(table, mid)
        detached = DetachedLab(lab)
        w = Workload("tcp", duration, 0.2, concurrency, 100, 100)
        runs: Dict[str, List[Dict[str, Any]]] = {"socklb": [], "detached": []}
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(rounds):
                for name, mode in (
                    (("socklb", lab), ("detached", detached))
                    if i % 2 == 0
                    else (
                        ("detached", detached),
                        ("socklb", lab),
                    )
                ):
                    runs[name].append(_profile(lab, mode, w, os.path.join(tmp, f"{name}{i}.data")))
        out: Dict[str, Any] = {"pinning": pin, "services": services, "runs": runs}

        def med(name: str, *path: str) -> Optional[float]:
            vals = []
            for r in runs[name]:
                v: Any = r
                for p in path:
                    v = v[p]
                vals.append(float(v))
            return statistics.median(vals) if vals else None

        diff: Dict[str, Any] = {}
        for key in ("rps", "p99_us", "client_cpu_us_per_req"):
            a, b = med("socklb", key), med("detached", key)
            diff[key] = {"socklb": a, "detached": b, "ratio": round(a / b, 4) if a and b else None}
        for g in GROUPS:
            a, b = med("socklb", "groups_us_per_req", g), med("detached", "groups_us_per_req", g)
            diff[g] = {"socklb_us": a, "detached_us": b}
        out["median"] = diff
        return out
    finally:
        lab.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.crr_profile")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--services", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=2)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, cgroups, BPF, perf)")
    json.dump(run(a.duration, a.rounds, a.services, a.concurrency), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
