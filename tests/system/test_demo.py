"""The README's first command runs `socklb demo`: it must balance and clean up."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import require_root


def netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def left_behind(new: set[str]) -> set[str]:
    """Of these lab namespaces, the ones no live lab owns.  Other labs (other test runs on
    this machine) come and go meanwhile; a lab holds its lock from before it creates its
    first namespace until after it removed its last."""
    from socklb.testing.lab import LOCK_DIR, _lock_is_free

    return {ns for ns in new if not ns.startswith("slb-") or _lock_is_free(f"{LOCK_DIR}/{ns[4:10]}.lock")}


def test_demo_balances_and_cleans_up() -> None:
    require_root()
    before = netns()
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
    assert left_behind(netns() - before) == set()
