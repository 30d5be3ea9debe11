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

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


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
    rows = re.findall(r"^(.{30}) (applied in +[\d.]+ ms| {19})  programmed: (.*?)\s+connections: (.*)$", out, re.M)
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
        assert (r[1].strip() == "") == (title == "before the update"), r  # every change was measured
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


CHECKS: Dict[str, Callable[[str], None]] = {
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
    check = CHECKS.get(path.stem)
    if check is not None:
        check(r.stdout)


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2
    assert set(CHECKS) <= {p.stem for p in EXAMPLES}
