"""Every program in examples/ runs to completion."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest
from helpers import require_root

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))

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


# What an example must print, beyond running to completion.
CHECKS: Dict[str, Callable[[str], None]] = {"canary": check_canary, "sidecar_coexistence": check_sidecar}


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
