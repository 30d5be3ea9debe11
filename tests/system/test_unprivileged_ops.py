"""Unprivileged use of the operator's commands tells the truth (issue 22,
defect 5): as nobody, an existing pin directory is not "no such pin
directory" (``/sys/fs/bpf`` is 0700: ``os.path.exists`` says False), and
``apply --dry-run`` does not count an unreadable directory as an empty
balancer.  EACCES and ENOENT are different errors, neither is an empty
balancer.  The child (tests/programs/unprivileged_ops.py) drops to nobody."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from typing import Any, Dict

from helpers import child_env, program
from pinned import new_pin_dir, pinned_dir

from socklb import Backend, Balancer, Service


def as_nobody(pd: str, missing: str, text: str) -> Dict[str, Any]:
    r = subprocess.run(
        [sys.executable, program("unprivileged_ops"), pd, missing, text],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_nobody_is_told_permission_denied_not_missing_or_empty() -> None:
    text = json.dumps([{"address": "10.96.11.1", "port": 80, "backends": [{"address": "10.244.11.1", "port": 80}]}])
    with pinned_dir() as pd:
        with Balancer(pin_dir=pd) as lb:
            lb.upsert(Service("10.96.11.1", 80, "tcp", [Backend("10.244.11.1", 80)]))
        missing = new_pin_dir()
        out = as_nobody(pd, missing, text)
        name, err, msg = out["view"]
        assert name == "PermissionDeniedError" and err == errno.EACCES, out["view"]
        assert "no such" not in msg
        # Nobody cannot tell a missing directory from a hidden one: not "no such", not empty.
        assert out["view_missing"][0] == "PermissionDeniedError", out["view_missing"]
        for what in ("services", "dry_run", "dry_run_missing"):
            r = out[what]
            assert r["rc"] != 0, (what, r)
            assert "Traceback" not in r["stderr"] and len(r["stderr"].strip().splitlines()) == 1, (what, r)
            assert "no such pin directory" not in r["stderr"] and r["stdout"] == "", (what, r)
            assert "Permission denied" in r["stderr"] or "0700" in r["stderr"], (what, r)
