"""Every program in examples/ runs to completion."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require_root

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))

# What some examples must print (regular expressions, each matching a line).
PRINTS = {
    "sidecar_coexistence": [
        r"^plain:  balanced at the socket over web-1, web-2$",
        r"^meshed before exclusion: the sidecar saw 10\.244\.\d+\.2:8080 \(a backend, not the VIP\)$",
        r"^meshed after exclusion:  the sidecar saw 10\.96\.0\.10:80 \(the VIP\) 12 of 12 times$",
        r"^plain after exclusion:   balanced at the socket over web-1, web-2$",
        r'^\{"excluded": \["meshed"\]\}$',
    ],
}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    require_root()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"{path.name} failed:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip(), f"{path.name} printed nothing"
    for pattern in PRINTS.get(path.stem, []):
        assert re.search(pattern, r.stdout, re.M), f"{path.name} did not print {pattern!r}:\n{r.stdout}"


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2
