"""Services as JSON between a test and its child programs (the test side is
tests/pinned.py's svc_to_json): imported by the programs next to it."""

from __future__ import annotations

from typing import Any, Dict

from socklb import Affinity, Backend, Service


def svc_from_json(d: Dict[str, Any]) -> Service:
    return Service(
        d["address"],
        d["port"],
        d["protocol"],
        [Backend(*b) for b in d["backends"]],
        d["algorithm"],
        Affinity(d["affinity"]) if d["affinity"] else None,
        d["terminate_tcp"],
    )
