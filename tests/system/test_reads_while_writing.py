"""Read-only views while the owner rewrites a service (issue 22, defect 1):
``PinnedView.services()``, the exporter's ``socklb_services`` and ``socklb
apply --dry-run`` must see every service in its old or its new version,
never missing, while another process swaps one service's list in a loop."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Iterator

import pytest
from helpers import child_env, program, socklb_cli
from pinned import pinned_dir

from socklb.ops.view import PinnedView

KEYS = {f"10.96.7.{i}" for i in range(1, 11)}


@contextlib.contextmanager
def rewriting(pd: str, seconds: float = 120) -> Iterator[subprocess.Popen[str]]:
    """A child process owning ``pd`` that rewrites 10.96.7.1 in a loop."""
    p = subprocess.Popen(
        [sys.executable, program("rewriter"), pd, str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("ready"), (line, p.stderr.read() if p.stderr else "")
        yield p
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.stdin = None
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=10)
            raise
        assert p.returncode == 0, err
        rewrites = int(out.split()[-1])
        assert rewrites > 100, out  # the owner really was writing all along


def test_pinned_view_never_misses_a_service_being_rewritten() -> None:
    with pinned_dir() as pd, rewriting(pd), PinnedView(pd) as v:
        missing = 0
        for _ in range(3000):
            got = {s.address for s in v.services()}
            assert got <= KEYS
            missing += len(KEYS - got)
        assert missing == 0, f"{missing} of 3000 reads missed a service"
        views = 0
        for _ in range(300):
            got = {sv.service.address for sv in v.service_views()}
            views += len(KEYS - got)
        assert views == 0, f"{views} of 300 service_views() reads missed a service"


@pytest.mark.slow
def test_exporter_service_count_while_a_service_is_rewritten() -> None:
    from prometheus_client import generate_latest

    from socklb.ops.metrics import registry

    with pinned_dir() as pd, rewriting(pd):
        reg = registry(pd)
        wrong = []
        for _ in range(300):
            text = generate_latest(reg).decode()
            total = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("socklb_services{"))
            if total != 10:
                wrong.append(total)
        assert not wrong, f"{len(wrong)} of 300 scrapes summed socklb_services wrong: {wrong[:5]}"


def test_dry_run_never_claims_a_programmed_service_is_new(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from socklb.ops import servicefile

    f = tmp_path / "s.json"
    # The same ten services (the rewritten one in its first version).
    want = [
        {
            "address": f"10.96.7.{i}",
            "port": 80,
            "backends": [{"address": f"10.244.7.{10 * i + j}", "port": 8080} for j in range(3)],
        }
        for i in range(1, 11)
    ]
    f.write_text(json.dumps(want))
    with pinned_dir() as pd, rewriting(pd):
        wanted = servicefile.load(str(f))
        added = 0
        for _ in range(1000):
            d = servicefile.diff_pinned(pd, wanted)
            added += len(d["added"])
        assert added == 0, f"{added} of 1000 dry runs claimed + add for a programmed service"
        for _ in range(5):
            r = socklb_cli("apply", "-f", str(f), "--pin-dir", pd, "--dry-run", "-o", "json")
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["added"] == [], r.stdout
