"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import pytest

if TYPE_CHECKING:
    from socklb import Service
    from socklb.datapath.live import Map
    from socklb.testing.lab import Lab

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PROGRAMS = TESTS / "programs"
"""The child programs the tests run (``[sys.executable, str(PROGRAMS / "name.py"), ...]``)."""

TCP_PORT = 8080
UDP_PORT = 5353
VIP4 = "10.96.0.10"
VIP6 = "fd00:96::a"
BACKENDS = ("b1", "b2", "b3")


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


MATRIX_ENV = "SOCKLB_KERNEL_MATRIX"
"""Set by ``./run kernels``: the suite runs on an older kernel on purpose, so
CI=true allows a skip for a feature the feature table says it lacks."""


def require_feature(name: str) -> None:
    """Skip the calling test if the kernel lacks the feature ``name`` of
    socklb._native.features (by the probe, not by version) - or fail it in CI, unless
    the kernel matrix (MATRIX_ENV) runs the suite on an old kernel."""
    from socklb._native import features

    f = next(f for f in features.FEATURES if f.name == name)
    if not features.lacks(f):
        return
    why = f"the kernel lacks {f.description} (Linux {f.kernel})"
    if in_ci() and os.environ.get(MATRIX_ENV) != "1":
        pytest.fail(f"{why}; CI=true forbids skipping (set {MATRIX_ENV}=1 on an old kernel)")
    pytest.skip(why)


def require_termination(balancer: Any) -> None:
    """Skip (or fail in CI, as require_feature) unless the balancer terminates
    sockets on removed backends: bpf_sock_destroy, or sock_diag's SOCK_DESTROY."""
    if balancer.terminates_sockets:
        return
    require_feature("sock_destroy")
    require_feature("diag_destroy")
    pytest.fail(f"sockets are not terminated: {balancer.termination}")


def refused() -> str:
    """The errno name a connect()/sendmsg() to a service without usable
    backends fails with here: ECONNREFUSED, or EPERM where the kernel lacks
    bpf_set_retval (the documented fallback)."""
    from socklb._native import features

    return "EPERM" if features.lacks(features.SET_RETVAL) else "ECONNREFUSED"


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
    """Run socklb.testing.client in ``pod``; returns its JSON result."""
    out = pod.run(
        [sys.executable, "-m", "socklb.testing.client", proto, host, str(port), "-n", str(n), *extra],
        timeout=timeout,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def raw_map(fd: int, name: str, key_size: int, value_size: int) -> Map:
    """A map by a file descriptor the test owns (a pinned map read as another tool would)."""
    from socklb.datapath.live import Map

    return Map(None, name, fd, key_size, value_size)


def child_env() -> Dict[str, str]:
    """The environment of a helper Python process: sees socklb like this one."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def socklb_cli(*args: str, stdin: Optional[str] = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``socklb`` command with ``args``."""
    return subprocess.run(
        [sys.executable, "-m", "socklb.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        input=stdin,
    )


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A command that failed as it should: non-zero, one line on stderr, no traceback."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def program(name: str) -> str:
    """The path of the child program ``tests/programs/<name>.py``."""
    return str(PROGRAMS / f"{name}.py")


def run_program(pod: Any, name: str, *args: str, timeout: float = 60) -> str:
    """Run the child program ``name`` (tests/programs/) in ``pod``; its standard output."""
    return str(pod.run([sys.executable, program(name), *args], timeout=timeout).stdout)


def udp_svc(world: World, vip: str = VIP4, names: tuple[str, ...] = BACKENDS, port: int = 53) -> Service:
    """A UDP service on ``vip:port`` whose backends are the world's pods ``names`` (their UDP_PORT)."""
    from socklb import Backend, Service

    v6 = ":" in vip
    return Service(vip, port, "udp", [Backend(p.ipv6 if v6 else p.ipv4, UDP_PORT) for p in world.pods(*names)])


def read_events(p: subprocess.Popen[str], until: Any, limit: int = 2000) -> list[dict[str, str]]:
    """JSON lines of ``p`` (tests/programs/udp_stream.py) until ``until(events)`` is true (at most ``limit``)."""
    assert p.stdout
    events: list[dict[str, str]] = []
    for _ in range(limit):
        line = p.stdout.readline()
        if not line:
            break
        events.append(json.loads(line))
        if until(events):
            break
    return events
