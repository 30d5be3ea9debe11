"""Every program in examples/ runs to completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require_root

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    require_root()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"{path.name} failed:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip(), f"{path.name} printed nothing"


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2
