"""The README's first command runs `socklb demo`: it must balance and clean up."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import require_root


def test_demo_balances_and_cleans_up() -> None:
    require_root()
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run(
        [sys.executable, "-m", "socklb.cli", "demo", "--backends", "3", "--connections", "60"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for name in ("backend-1", "backend-2", "backend-3"):
        assert name in out
    assert "getpeername() returned: 10.96.0.10:80 x60" in out
    assert "getpeername() returned: [fd00:96::a]:80 x60" in out
    assert "every backend served, every peer was the VIP" in out
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before
