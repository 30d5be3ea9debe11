"""What each translating hook costs per call, in one lab, from the kernel's BPF statistics.

    .venv/bin/python -m bench.hook_cost [-n 20000] [--rounds 5] [--services 1]
    .venv/bin/python -m bench.hook_cost --compare /path/to/other/.venv/bin/python

Builds a lab (client pod, one backend pod), programs one TCP and one UDP service
per family (plus ``--services`` - 1 TCP fillers) and, with BPF statistics on,
runs ``n`` calls of each workload from the client pod: new TCP sockets that
connect to the VIP and close (connect4, connect6), one unconnected UDP socket
doing sendto/recvfrom to the VIP (sendmsg4/6, recvmsg4/6), and new UDP sockets
that connect (``udpc:connect4``).  Prints, per hook, the median over the rounds
of the average run time per call, in ns, as JSON.

``floor_ns`` next to each hook is what an empty program of the same hook
(``r0 = 1; exit``, loaded by the bench's own helper library, ``bench/floor.c``
built by :mod:`bench.build`, and attached to the same cgroup after socklb's
programs) costs by the same statistics in the same
round: the clock reads and dispatch of bpf_stats on this machine (~30 ns on a
kvm-clock VM), which every hook's number includes.

With ``--compare PYTHON`` every round runs twice, once with this interpreter and
once with PYTHON (another build's virtualenv, e.g. one made from an older
commit), alternating, so that both builds see the same machine: the A/B the
README's hook-cost table comes from.  ``before`` is PYTHON, ``after`` this one.
With ``--together`` each round runs both builds at the same time, each in its
own lab: on a machine whose load changes from one minute to the next, both
then see the same load (and each other's).  ``paired`` is the median of the
rounds' after/before ratios.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from bench.build import build
from bench.system import bpf_stats
from socklb import Backend, Balancer, Service
from socklb._native import check
from socklb.testing.lab import Lab

CLIENT = r"""
import socket, sys
host, port, n, what = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
if what == "tcp":
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.connect((host, port))
        s.close()
elif what == "udpc":
    for _ in range(n):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.connect((host, port))
        s.close()
else:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2)
    for _ in range(n):
        s.sendto(b"x", (host, port))
        s.recvfrom(2048)
"""

VIP_TCP4, VIP_UDP4, VIP_TCP6, VIP_UDP6 = "10.96.0.10", "10.96.0.53", "fd00:96::10", "fd00:96::53"
# (workload, VIP, port, family): what the client runs, and which hooks it times.
RUNS: Tuple[Tuple[str, str, int, str], ...] = (
    ("tcp", VIP_TCP4, 80, "4"),
    ("tcp", VIP_TCP6, 80, "6"),
    ("udp", VIP_UDP4, 53, "4"),
    ("udp", VIP_UDP6, 53, "6"),
    ("udpc", VIP_UDP4, 53, "4"),
)


# The hooks of bench/floor.c's floor_attach().
FLOOR_HOOKS = (("connect4", 0), ("sendmsg4", 1))
_floor: Optional[ctypes.CDLL] = None


def floor_library() -> ctypes.CDLL:
    """bench/floor.c as a shared library (built by :func:`bench.build.build` if
    it is missing or stale), loaded once per process."""
    global _floor
    if _floor is None:
        lib = ctypes.CDLL(build()["floor"], use_errno=True)
        lib.floor_attach.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
        lib.floor_attach.restype = ctypes.c_int
        u64p = ctypes.POINTER(ctypes.c_uint64)
        lib.floor_prog_stats.argtypes = (ctypes.c_int, u64p, u64p)
        lib.floor_prog_stats.restype = ctypes.c_int
        _floor = lib
    return _floor


class Floor:
    """Empty connect4 and sendmsg4 programs attached to a cgroup (after what is
    there): the measurement floor.  Closing detaches them."""

    def __init__(self, cgroup: str) -> None:
        self._fds: Dict[str, Tuple[int, int]] = {}
        lib = floor_library()
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, code in FLOOR_HOOKS:
                link = ctypes.c_int(-1)
                prog = check(lib.floor_attach(code, cg, ctypes.byref(link)), f"attach the empty {name} program")
                self._fds[name] = (prog, link.value)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(cg)

    def stats(self) -> Dict[str, Tuple[int, int]]:
        out = {}
        lib, cnt, ns = floor_library(), ctypes.c_uint64(), ctypes.c_uint64()
        for name, (prog, _) in self._fds.items():
            rc = lib.floor_prog_stats(prog, ctypes.byref(cnt), ctypes.byref(ns))
            check(rc, "read the empty program's statistics")
            out[f"floor_{name}"] = (int(cnt.value), int(ns.value))
        return out

    def close(self) -> None:
        for prog, link in self._fds.values():
            os.close(link)
            os.close(prog)
        self._fds.clear()

    def __enter__(self) -> Floor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stats(lb: Balancer, floor: Floor) -> Dict[str, Tuple[int, int]]:
    out = {s.name: (s.run_cnt, s.run_time_ns) for s in lb.program_stats()}
    out.update(floor.stats())
    return out


def measure(n: int, rounds: int, services: int) -> Dict[str, List[float]]:
    """Average ns per call of each hook, one value per round."""
    out: Dict[str, List[float]] = {}
    with Lab() as lab, Balancer() as lb:
        client, web = lab.add_pod("client"), lab.add_pod("web")
        web.serve("web", tcp=[8080], udp=[5353])
        svcs = [
            Service(VIP_TCP4, 80, "tcp", [Backend(web.ipv4, 8080)]),
            Service(VIP_UDP4, 53, "udp", [Backend(web.ipv4, 5353)]),
            Service(VIP_TCP6, 80, "tcp", [Backend(web.ipv6, 8080)]),
            Service(VIP_UDP6, 53, "udp", [Backend(web.ipv6, 5353)]),
        ]
        base = int(ipaddress.ip_address("10.100.0.0"))
        svcs += [
            Service(str(ipaddress.ip_address(base + i)), 80, "tcp", [Backend(web.ipv4, 8080)])
            for i in range(max(services - 1, 0))
        ]
        lb.sync(svcs)
        lb.attach(client.cgroup)
        with Floor(client.cgroup) as floor:
            for _ in range(rounds):
                for what, host, port, fam in RUNS:
                    with bpf_stats():
                        a = _stats(lb, floor)
                        client.python(CLIENT, host, str(port), str(n), what, timeout=600)
                        b = _stats(lb, floor)
                    hooks = [f"socklb_{h}{fam}" for h in (("sendmsg", "recvmsg") if what == "udp" else ("connect",))]
                    if what in ("tcp", "udp") and fam == "4" and f"floor_{hooks[0][7:]}" in b:
                        hooks.append(f"floor_{hooks[0][7:]}")
                    for name in hooks:
                        cnt = b[name][0] - a[name][0]
                        if cnt < n:
                            raise SystemExit(f"{name} ran {cnt} times for {n} calls")
                        hook = name.split("_", 1)[1]
                        key = f"floor:{hook}" if name.startswith("floor_") else f"{what}:{hook}"
                        out.setdefault(key, []).append((b[name][1] - a[name][1]) / cnt)
    return out


def _start_other(python: str, n: int, services: int) -> subprocess.Popen[str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [python, "-m", "bench.hook_cost", "-n", str(n), "--rounds", "1", "--services", str(services), "--raw"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the other build imports its own socklb
    return subprocess.Popen(argv, cwd=here, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_other(python: str, p: subprocess.Popen[str]) -> Dict[str, List[float]]:
    try:
        out, err = p.communicate(timeout=3600)
    except BaseException:
        p.kill()
        p.wait()
        raise
    if p.returncode != 0:
        raise SystemExit(f"{python}: exited with {p.returncode}: {err.strip()[-2000:]}")
    res: Dict[str, List[float]] = json.loads(out)
    return res


def _floor_of(key: str) -> str:
    """The floor row that goes with a hook's row: the empty connect4 program's
    for the connect hooks, the empty sendmsg4 one's for the others (the UDP
    workload's round)."""
    return "floor:connect4" if key.split(":")[1].startswith("connect") else "floor:sendmsg4"


def _summary(res: Dict[str, List[float]]) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in res.items():
        row: Dict[str, object] = {"median_ns": round(statistics.median(v), 1), "rounds_ns": [round(x, 1) for x in v]}
        f = res.get(_floor_of(k))
        if f and not k.startswith("floor:"):
            row["floor_ns"] = round(statistics.median(f), 1)
            row["floor_rounds_ns"] = [round(x, 1) for x in f]
        out[k] = row
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hook_cost")
    ap.add_argument("-n", type=int, default=20000, help="calls per workload and round (default 20000)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--services", type=int, default=1, help="services programmed, fillers included (default 1)")
    ap.add_argument("--compare", metavar="PYTHON", help="alternate rounds with another build's interpreter")
    ap.add_argument(
        "--together",
        action="store_true",
        help="with --compare: run both builds' rounds at the same time (two labs), not one after the other",
    )
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.n < 1 or a.rounds < 1 or a.services < 1:
        ap.error("-n, --rounds and --services must be positive")
    if a.raw:
        json.dump(measure(a.n, a.rounds, a.services), sys.stdout)
        return 0
    if not a.compare:
        json.dump(_summary(measure(a.n, a.rounds, a.services)), sys.stdout)
        sys.stdout.write("\n")
        return 0
    before: Dict[str, List[float]] = {}
    after: Dict[str, List[float]] = {}
    floor_library()  # built here, not by both builds' processes at once
    for _ in range(a.rounds):
        other = _start_other(a.compare, a.n, a.services)
        if not a.together:
            for k, v in _wait_other(a.compare, other).items():
                before.setdefault(k, []).extend(v)
        try:
            mine = measure(a.n, 1, a.services)
        except BaseException:
            other.kill()
            other.wait()
            raise
        if a.together:
            for k, v in _wait_other(a.compare, other).items():
                before.setdefault(k, []).extend(v)
        for k, v in mine.items():
            after.setdefault(k, []).extend(v)
    report: Dict[str, Dict[str, object]] = {
        k: {
            "before_ns": round(statistics.median(before[k]), 1),
            "after_ns": round(statistics.median(after[k]), 1),
            "ratio": round(statistics.median(after[k]) / statistics.median(before[k]), 2),
            "paired": round(statistics.median(x / y for x, y in zip(after[k], before[k])), 2),
            "before_rounds_ns": [round(x, 1) for x in before[k]],
            "after_rounds_ns": [round(x, 1) for x in after[k]],
        }
        for k in after
        if k in before
    }
    # The floor, measured in this build's rounds (an older build may not have it).
    for k, row in report.items():
        f = after.get(_floor_of(k)) or before.get(_floor_of(k))
        if f:
            row["floor_ns"] = round(statistics.median(f), 1)
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
