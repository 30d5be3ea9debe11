"""Shared pytest helpers."""

from __future__ import annotations

# ---------------------------------------------------------------------------
# BEGIN lab helpers (socklb.lab): require_root(), in_ci(), the `lab` fixture.
# ---------------------------------------------------------------------------
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from socklb.lab import Lab


def in_ci() -> bool:
    """True when the environment variable CI says we run in CI (CI=true)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_root() -> None:
    """Skip the calling test unless running as root - or fail it in CI, where nothing may skip."""
    if os.geteuid() == 0:
        return
    if in_ci():
        pytest.fail("this test needs root (network namespaces, cgroups, BPF); CI=true forbids skipping it")
    pytest.skip("needs root (network namespaces, cgroups, BPF)")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh, empty :class:`socklb.lab.Lab` (node namespace only); closed after the test."""
    require_root()
    from socklb.lab import Lab

    with Lab() as the_lab:
        yield the_lab


# ---------------------------------------------------------------------------
# END lab helpers
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# BEGIN datapath helpers: a shared lab "world" with backends, a balancer per test.
# ---------------------------------------------------------------------------
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Dict, List  # noqa: E402

TCP_PORT = 8080
UDP_PORT = 5353
VIP4 = "10.96.0.10"
VIP6 = "fd00:96::a"
BACKENDS = ("b1", "b2", "b3")


@dataclass
class World:
    """One lab for the whole session: a client pod (the one balancers attach
    to), an outsider pod (never attached) and backend pods b1..b3, each serving
    TCP 8080 and UDP 5353 with its name."""

    lab: Lab
    client: Any
    outsider: Any
    backends: Dict[str, Any]

    def pods(self, *names: str) -> List[Any]:
        return [self.backends[n] for n in names]


def dial(
    pod: Any, proto: str, host: str, port: int, n: int = 1, *extra: str, timeout: float = 120
) -> Dict[str, List[str]]:
    """Run socklb.labclient in ``pod``; returns its JSON result."""
    out = pod.run(
        [sys.executable, "-m", "socklb.labclient", proto, host, str(port), "-n", str(n), *extra],
        timeout=timeout,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    require_root()
    from socklb.lab import Lab

    with Lab() as the_lab:
        client = the_lab.add_pod("client")
        outsider = the_lab.add_pod("outsider")
        backends = {n: the_lab.add_pod(n) for n in BACKENDS}
        for name, pod in backends.items():
            pod.serve(name, tcp=[TCP_PORT], udp=[UDP_PORT])
        yield World(the_lab, client, outsider, backends)


@pytest.fixture
def balancer() -> Iterator[Any]:
    """A fresh Balancer (nothing attached), closed after the test."""
    require_root()
    from socklb import Balancer

    lb = Balancer()
    try:
        yield lb
    finally:
        lb.close()


# ---------------------------------------------------------------------------
# END datapath helpers
# ---------------------------------------------------------------------------
