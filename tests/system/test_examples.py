"""Every program in examples/ runs to completion; the mesh and Kubernetes examples
print what they claim (checked line by line below)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
from helpers import require_root

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.py"))

# The lines examples/sidecar_coexistence.py must print (regular expressions).
SIDECAR_LINES = [
    r"^plain:  balanced at the socket over web-1, web-2$",
    r"^meshed before exclusion: the sidecar saw 10\.244\.\d+\.2:8080 \(a backend, not the VIP\)$",
    r"^meshed after exclusion:  the sidecar saw 10\.96\.0\.10:80 \(the VIP\) 12 of 12 times$",
    r"^plain after exclusion:   balanced at the socket over web-1, web-2$",
    r'^\{"excluded": \["meshed"\]\}$',
]


def check_sidecar(out: str) -> None:
    """The excluded pod's sidecar saw the VIP, the other pod was balanced at the socket."""
    for pattern in SIDECAR_LINES:
        assert re.search(pattern, out, re.M), f"did not print {pattern!r}:\n{out}"


def check_canary(out: str) -> None:
    """Each step's measured v2 share is its weight's, within 0.06 (four
    standard deviations at 50/50 with 1000 connections); nothing failed."""
    steps = re.findall(r"^\s*(\d+)\s+(\d+)/(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+)$", out, re.M)
    assert [(w1, w2) for _, w1, w2, *_ in steps] == [("100", "0"), ("90", "10"), ("50", "50"), ("0", "100")], out
    for _, w1, w2, n, share, failed in steps:
        target = int(w2) / (int(w1) + int(w2))
        assert int(n) == 1000 and int(failed) == 0, out
        assert abs(float(share) - target) <= 0.06, (target, share, out)
    assert re.search(r"^failed connections: 0$", out, re.M), out


def check_per_workload_routing(out: str) -> None:
    rows = re.findall(r"^\s+(pod-[abc]): (\d+) connections\s+v1\s+([\d.]+)%\s+v2\s+([\d.]+)%\s+failed (\d+)", out, re.M)
    assert len(rows) == 6, out
    got: List[Dict[str, Tuple[float, float]]] = [{}, {}]
    for i, (pod, n, v1, v2, failed) in enumerate(rows):
        assert int(n) == 150 and int(failed) == 0, rows[i]
        got[i // 3][pod] = (float(v1), float(v2))
    first, second = got
    assert first["pod-a"] == (100.0, 0.0), first  # its own Balancer: v1 only
    assert first["pod-b"] == (0.0, 100.0), first  # its own Balancer: v2 only
    assert 25 < first["pod-c"][0] < 75, first  # the node's Balancer: both
    assert second["pod-a"] == second["pod-b"] == (100.0, 0.0), second  # pod-b moved to v1
    assert 25 < second["pod-c"][0] < 75, second


def check_locality_failover(out: str) -> None:
    pattern = (
        r"^phase (\d)\s+(.+?)\s+programmed ([a-z0-9 ]+?)\s+(\d+) connections"
        r"\s+zone-a\s+([\d.]+)%\s+zone-b\s+([\d.]+)%\s+\((.*)\)$"
    )
    rows = re.findall(pattern, out, re.M)
    assert [r[0] for r in rows] == ["1", "2", "3", "4"], out
    served = [{d.split()[0] for d in r[6].split(", ")} for r in rows]
    for r in rows:
        assert int(r[3]) >= 50, r  # each phase held until 50 connections were made
    zones = [(float(r[4]), float(r[5])) for r in rows]
    assert zones[0] == (100.0, 0.0) and served[0] == {"a1", "a2"}, rows[0]  # same zone first
    assert zones[1] == (0.0, 100.0) and served[1] == {"b1", "b2"}, rows[1]  # failed over
    assert zones[2] == (100.0, 0.0) and served[2] == {"a1"}, rows[2]  # back, to the one that recovered
    assert zones[3] == (100.0, 0.0) and served[3] == {"a1", "a2"}, rows[3]
    m = re.search(r"^failed connections: (\d+) of (\d+)", out, re.M)
    assert m and m.group(1) == "0" and int(m.group(2)) >= 200, out


def check_kubernetes_agent(out: str) -> None:
    assert re.search(r"^synced: shop/web 10\.96\.0\.30:80 -> web-1, web-2$", out, re.M), out
    rows = re.findall(r"^(.{30})  +([\d.]+ ms|-)  (.+?)  +((?:web-\d \d+(?:, )?)+)$", out, re.M)
    steps = {r[0].strip(): r for r in rows}
    assert list(steps) == [
        "before the update",
        "web-3 starts (not ready)",
        "web-3 ready",
        "web-1 terminating",
        "web-4 ready",
        "web-1 gone, web-2 terminating",
        "web-2 gone",
    ], out
    for title, r in steps.items():
        assert (r[1] == "-") == (title == "before the update"), r  # every change was measured
    served = {t: {d.split()[0] for d in r[3].split(", ")} for t, r in steps.items()}
    programmed = {t: r[2] for t, r in steps.items()}
    assert served["before the update"] == served["web-3 starts (not ready)"] == {"web-1", "web-2"}, out
    assert programmed["web-3 ready"] == "web-1, web-2, web-3" and "web-3" in served["web-3 ready"], out
    # terminating with ready ones left: not a backend any more (kube-proxy's rule)
    assert programmed["web-1 terminating"] == "web-2, web-3" and served["web-1 terminating"] == {"web-2", "web-3"}
    assert served["web-4 ready"] == {"web-2", "web-3", "web-4"}, out
    assert served["web-1 gone, web-2 terminating"] == served["web-2 gone"] == {"web-3", "web-4"}, out
    m = re.search(r"^failed connections: (\d+) of (\d+)", out, re.M)
    assert m and m.group(1) == "0" and int(m.group(2)) >= 350, out
    assert re.search(r"^agent: 1 full sync, \d+ applies, 5 upserts; network programming latency", out, re.M), out


# What an example must print, beyond running to completion.
CHECKS: Dict[str, Callable[[str], None]] = {
    "canary": check_canary,
    "sidecar_coexistence": check_sidecar,
    "per_workload_routing": check_per_workload_routing,
    "locality_failover": check_locality_failover,
    "kubernetes_agent": check_kubernetes_agent,
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    require_root()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"{path.name} failed:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip(), f"{path.name} printed nothing"
    if path.stem in CHECKS:
        CHECKS[path.stem](r.stdout)


def test_canary_check_can_fail() -> None:
    good = "\n".join(
        ["step  v1/v2  connects  v2 share  failed"]
        + [
            f"{i:4d}  {s:>5}  {1000:8d}  {x:8.3f}  {0:6d}"
            for i, (s, x) in enumerate([("100/0", 0.0), ("90/10", 0.1), ("50/50", 0.5), ("0/100", 1.0)], 1)
        ]
        + ["failed connections: 0"]
    )
    check_canary(good)
    for bad in (good.replace("   0.500", "   0.600"), good.replace("connections: 0", "connections: 2")):
        with pytest.raises(AssertionError):
            check_canary(bad)


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2
    assert set(CHECKS) <= {p.stem for p in EXAMPLES}


ROUTING_OUT = """\
pod-a has a Balancer of its own (v1), pod-b too (v2), pod-c only the node's (v1+v2); each dials 10.96.0.10:80
  pod-a: 150 connections  v1 100.0%  v2   0.0%  failed 0   (v1-web-1 82, v1-web-2 68)
  pod-b: 150 connections  v1   0.0%  v2 100.0%  failed 0   (v2-web-1 77, v2-web-2 73)
  pod-c: 150 connections  v1  54.7%  v2  45.3%  failed 0   (v1-web-1 37, v1-web-2 45, v2-web-1 37, v2-web-2 31)
pod-b's Balancer moved to v1 (one upsert; pod-a and pod-c untouched); each dials 10.96.0.10:80
  pod-a: 150 connections  v1 100.0%  v2   0.0%  failed 0   (v1-web-1 68, v1-web-2 82)
  pod-b: 150 connections  v1 100.0%  v2   0.0%  failed 0   (v1-web-1 70, v1-web-2 80)
  pod-c: 150 connections  v1  55.3%  v2  44.7%  failed 0   (v1-web-1 41, v1-web-2 42, v2-web-1 34, v2-web-2 33)
"""
FAILOVER_OUT = """\
phase 1  all ready       programmed a1 a2      90 connections  zone-a 100.0%  zone-b   0.0%  (a1 45, a2 45)
phase 2  a1, a2 unready  programmed b1 b2     128 connections  zone-a   0.0%  zone-b 100.0%  (b1 67, b2 61)
phase 3  a1 recovered    programmed a1         98 connections  zone-a 100.0%  zone-b   0.0%  (a1 98)
phase 4  a2 recovered    programmed a1 a2     118 connections  zone-a 100.0%  zone-b   0.0%  (a1 57, a2 61)
failed connections: 0 of 438 (4 were under way while the backends changed, counted in no phase)
"""
AGENT_OUT = """\
synced: shop/web 10.96.0.30:80 -> web-1, web-2
step                             applied  programmed            connections made meanwhile
before the update                      -  web-1, web-2          web-1 68, web-2 47
web-3 starts (not ready)         14.6 ms  web-1, web-2          web-1 77, web-2 79
web-3 ready                       2.0 ms  web-1, web-2, web-3   web-1 56, web-2 73, web-3 89
web-1 terminating                 6.6 ms  web-2, web-3          web-2 83, web-3 93
web-4 ready                       2.4 ms  web-2, web-3, web-4   web-2 104, web-3 111, web-4 116
web-1 gone, web-2 terminating     1.6 ms  web-3, web-4          web-3 225, web-4 227
web-2 gone                        1.0 ms  web-3, web-4          web-3 161, web-4 176
failed connections: 0 of 1797 (12 were under way while the backends changed, counted in no step)
agent: 1 full sync, 7 applies, 5 upserts; network programming latency p50 2.0 ms, max 14.6 ms
"""


@pytest.mark.parametrize(
    "name, good, bad",
    [
        (
            "per_workload_routing",
            ROUTING_OUT,
            ("v2   0.0%  failed 0   (v1-web-1 82", "v2   1.3%  failed 0   (v1-web-1 82"),
        ),
        ("per_workload_routing", ROUTING_OUT, ("v1  54.7%  v2  45.3%", "v1 100.0%  v2   0.0%")),
        ("locality_failover", FAILOVER_OUT, ("failed connections: 0", "failed connections: 1")),
        ("locality_failover", FAILOVER_OUT, ("zone-a   0.0%  zone-b 100.0%", "zone-a   2.3%  zone-b  97.7%")),
        ("locality_failover", FAILOVER_OUT, ("(a1 98)", "(a1 97, a2 1)")),
        ("kubernetes_agent", AGENT_OUT, ("failed connections: 0", "failed connections: 2")),
        ("kubernetes_agent", AGENT_OUT, ("web-2, web-3          web-2 83", "web-2, web-3          web-1 2, web-2 83")),
        (
            "kubernetes_agent",
            AGENT_OUT,
            ("web-2 gone                        1.0 ms", "web-2 gone" + " " * 31 + "-"),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and "\n" not in v else "",
)
def test_example_checks_can_fail(name: str, good: str, bad: Tuple[str, str]) -> None:
    CHECKS[name](good)
    assert bad[0] in good
    with pytest.raises(AssertionError):
        CHECKS[name](good.replace(bad[0], bad[1], 1))
