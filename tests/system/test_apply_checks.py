"""``socklb apply --dry-run`` runs every check ``apply`` runs, ``apply`` reports
the diff it computed under the owner lock, and keys given twice are refused
(issue 22, defect 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import pytest
from helpers import one_line_error, socklb_cli
from pinned import pinned_dir

import socklb.balancer
from socklb import Backend, Balancer, Service
from socklb.errors import InvalidValueError
from socklb.ops import servicefile
from socklb.ops.view import PinnedView


def programmed(pd: str) -> List[str]:
    with PinnedView(pd) as v:
        return sorted(str(s) for s in v.services())


def svc_json(i: int) -> Any:
    return {"address": f"10.96.9.{i}", "port": 80, "backends": [{"address": f"10.244.9.{i}", "port": 8080}]}


def test_dry_run_checks_capacity_like_apply(tmp_path: Path) -> None:
    f = tmp_path / "nine.json"
    f.write_text(json.dumps([svc_json(i) for i in range(1, 10)]))
    with pinned_dir() as pd:
        with Balancer(pin_dir=pd, max_services=8) as lb:
            lb.upsert(Service("10.96.9.100", 80, "tcp", [Backend("10.244.9.100", 8080)]))
        before = programmed(pd)
        for extra in (["--dry-run"], [], ["--prune", "--dry-run"], ["--prune"]):
            one_line_error(socklb_cli("apply", "-f", str(f), "--pin-dir", pd, *extra), "services")
            assert programmed(pd) == before, extra
        # Eight with --prune fit (the one programmed goes); eight without do not.
        f.write_text(json.dumps([svc_json(i) for i in range(1, 9)]))
        one_line_error(socklb_cli("apply", "-f", str(f), "--pin-dir", pd, "--dry-run"), "services")
        r = socklb_cli("apply", "-f", str(f), "--pin-dir", pd, "--prune", "--dry-run", "-o", "json")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["added"]) == 8
        assert programmed(pd) == before


def test_apply_reports_the_diff_taken_under_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    a = Service("10.96.9.1", 80, "tcp", [Backend("10.244.9.1", 8080)])
    a2 = Service("10.96.9.1", 80, "tcp", [Backend("10.244.9.2", 8080)])
    real = socklb.balancer.Balancer
    with pinned_dir() as pd:
        with real(pin_dir=pd) as lb:
            lb.upsert(a)

        class Racing(real):  # type: ignore[misc, valid-type]
            """Another owner removes the service just before apply takes the lock."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                with real(pin_dir=pd) as other:
                    other.remove(a)
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(socklb.balancer, "Balancer", Racing)
        res = servicefile.apply(pd, [a2])
        assert res["added"] == ["10.96.9.1:80/tcp"] and res["updated"] == [], res
        assert programmed(pd) == [str(a2)]


@pytest.mark.parametrize(
    "name,text",
    [
        ("dup.yaml", "services:\n- address: 10.96.9.1\n  port: 80\n  port: 81\n"),
        ("dupback.yaml", "- {address: 10.96.9.1, port: 80, backends: [{address: 10.244.9.1, port: 1, port: 2}]}\n"),
        ("duptop.yaml", "services: []\nservices:\n- {address: 10.96.9.1, port: 80}\n"),
        ("dup.json", '[{"address": "10.96.9.1", "port": 80, "port": 81}]'),
    ],
)
def test_duplicate_keys_are_refused(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(InvalidValueError, match="duplicate key"):
        servicefile.parse(text, name)
    f = tmp_path / name
    f.write_text(text)
    with pinned_dir() as pd:
        with Balancer(pin_dir=pd) as lb:
            lb.upsert(Service("10.96.9.100", 80, "tcp", [Backend("10.244.9.100", 8080)]))
        for extra in (["--dry-run"], [], ["--prune"]):
            one_line_error(socklb_cli("apply", "-f", str(f), "--pin-dir", pd, *extra), "duplicate key")
        assert programmed(pd) == ["10.96.9.100:80/tcp"]
