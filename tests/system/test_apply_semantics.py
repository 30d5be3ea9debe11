"""``socklb apply`` semantics (issue 22, defect 2): additive by default (like
``kubectl apply``), ``--prune`` removes what the file does not name, and a file
with no services (empty, whitespace, comments, ``null``, ``services:`` with
nothing under it) is refused with nothing written; only an explicit empty list
with ``--prune`` removes every service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

from helpers import one_line_error, socklb_cli
from pinned import pinned_dir

from socklb import Backend, Balancer, Service
from socklb.ops.view import PinnedView

A = Service("10.96.8.1", 80, "tcp", [Backend("10.244.8.1", 8080)])
B = Service("10.96.8.2", 80, "tcp", [Backend("10.244.8.2", 8080)])
C = Service("10.96.8.3", 53, "udp", [Backend("10.244.8.3", 5353)])


def programmed(pd: str) -> List[str]:
    with PinnedView(pd) as v:
        return sorted(str(s) for s in v.services())


def test_empty_documents_are_refused_and_write_nothing(tmp_path: Path) -> None:
    with pinned_dir() as pd:
        with Balancer(pin_dir=pd) as lb:
            lb.sync([A, B])
        before = programmed(pd)
        empties = {"blank.yaml": "", "ws.yaml": "  \n   \n", "comment.yaml": "# nothing\n", "null.yaml": "null\n"}
        empties["nothing-under.yaml"] = "services:\n"
        empties["null.json"] = "null"
        files = [str(tmp_path / n) for n in empties]
        for n, text in empties.items():
            (tmp_path / n).write_text(text)
        files.append("/dev/null")
        for f in files:
            for extra in ([], ["--prune"], ["--dry-run"], ["--prune", "--dry-run"]):
                one_line_error(socklb_cli("apply", "-f", f, "--pin-dir", pd, *extra), "no services")
                assert programmed(pd) == before, (f, extra)
        # an explicit empty list without --prune: refused too
        (tmp_path / "empty.json").write_text("[]")
        (tmp_path / "empty.yaml").write_text("services: []\n")
        for n in ("empty.json", "empty.yaml"):
            one_line_error(socklb_cli("apply", "-f", str(tmp_path / n), "--pin-dir", pd), "--prune")
            assert programmed(pd) == before
        # ... and with --prune it removes every service
        dry = socklb_cli(
            "apply", "-f", str(tmp_path / "empty.yaml"), "--pin-dir", pd, "--prune", "--dry-run", "-o", "json"
        )
        assert dry.returncode == 0 and sorted(json.loads(dry.stdout)["removed"]) == before, dry.stderr
        r = socklb_cli("apply", "-f", str(tmp_path / "empty.yaml"), "--pin-dir", pd, "--prune", "-o", "json")
        assert r.returncode == 0, r.stderr
        assert programmed(pd) == []


def test_apply_is_additive_and_prune_removes_the_rest(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(
        json.dumps(
            [
                {
                    "address": C.address,
                    "port": 53,
                    "protocol": "udp",
                    "backends": [{"address": "10.244.8.3", "port": 5353}],
                }
            ]
        )
    )
    with pinned_dir() as pd:
        with Balancer(pin_dir=pd) as lb:
            lb.sync([A, B])
        dry = json.loads(socklb_cli("apply", "-f", str(f), "--pin-dir", pd, "--dry-run", "-o", "json").stdout)
        assert dry["added"] == ["10.96.8.3:53/udp"] and dry["removed"] == [], dry
        r = socklb_cli("apply", "-f", str(f), "--pin-dir", pd, "-o", "json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["removed"] == []
        assert programmed(pd) == sorted(str(s) for s in (A, B, C))
        dry = json.loads(
            socklb_cli("apply", "-f", str(f), "--pin-dir", pd, "--prune", "--dry-run", "-o", "json").stdout
        )
        assert sorted(dry["removed"]) == ["10.96.8.1:80/tcp", "10.96.8.2:80/tcp"] and dry["unchanged"] == 1, dry
        r = socklb_cli("apply", "-f", str(f), "--pin-dir", pd, "--prune", "-o", "json")
        assert r.returncode == 0, r.stderr
        assert programmed(pd) == [str(C)]
