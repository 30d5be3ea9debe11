"""Cgroup management on the real cgroup v2 hierarchy (socklb.datapath.cgroup,
root): make, move, remove; the parsing is in tests/unit/test_cgroup_mounts.py."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from helpers import program, require_root

from socklb.datapath import cgroup
from socklb.errors import InvalidValueError, NotCgroupV2Error


@pytest.fixture
def scratch() -> Iterator[str]:
    """A fresh cgroup directory under the cgroup2 mount, removed afterwards."""
    require_root()
    path = os.path.join(cgroup.cgroup2_mount(), f"socklb-test-{secrets.token_hex(4)}")
    try:
        yield path
    finally:
        cgroup.remove_cgroup(path)
        assert not os.path.exists(path)


def test_make_move_remove(scratch: str) -> None:
    leaf = cgroup.make_cgroup(os.path.join(scratch, "a", "b"))
    assert os.path.isdir(leaf)
    with pytest.raises(OSError):
        cgroup.make_cgroup(leaf)
    assert cgroup.make_cgroup(leaf, exist_ok=True) == leaf
    with pytest.raises(NotCgroupV2Error):
        cgroup.make_cgroup("/tmp/socklb-not-a-cgroup/x")
    assert not os.path.exists("/tmp/socklb-not-a-cgroup")

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        cgroup.move_pid(leaf, procs[0].pid)
        cgroup.move_pid(os.path.join(scratch, "a"), procs[1].pid)
        cgroup.move_pid(scratch, procs[2].pid)
        rel = "/" + os.path.relpath(leaf, cgroup.cgroup2_mount())
        assert cgroup.pid_cgroup(procs[0].pid) == rel
        assert cgroup.cgroup_procs(leaf) == [procs[0].pid]
        assert cgroup.remove_cgroup(scratch) == 3
        assert not os.path.exists(scratch)
        for p in procs:
            assert p.wait(5) == -9
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert cgroup.remove_cgroup(scratch) == 0


def test_remove_without_cgroup_kill(scratch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "_USE_CGROUP_KILL", False)
    cgroup.make_cgroup(os.path.join(scratch, "x"))
    # A shell that keeps forking children: the fallback must still empty the subtree.
    p = subprocess.Popen(["sh", "-c", "while :; do sleep 60 & sleep 0.01; done"])
    try:
        cgroup.move_pid(os.path.join(scratch, "x"), p.pid)
        time.sleep(0.2)
        assert cgroup.remove_cgroup(scratch) == 2
        assert p.wait(5) == -9
    finally:
        p.kill()
        p.wait()


def test_remove_refuses_root_and_own_cgroup(scratch: str) -> None:
    with pytest.raises(InvalidValueError, match="root"):
        cgroup.remove_cgroup(cgroup.cgroup2_mount())
    with pytest.raises(NotCgroupV2Error):
        cgroup.remove_cgroup("/tmp")
    path = cgroup.make_cgroup(scratch)
    env = dict(os.environ, PYTHONPATH=_src_dir() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, program("remove_own_cgroup"), path], capture_output=True, text=True, timeout=30, env=env
    )
    assert r.returncode == 0, r.stderr
    assert "refused" in r.stdout and "calling process" in r.stdout


def _src_dir() -> str:
    import socklb

    return os.path.dirname(os.path.dirname(os.path.abspath(socklb.__file__)))
