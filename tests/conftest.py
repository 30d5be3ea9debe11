"""Fixtures shared by the tests; helper functions are in helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from helpers import BACKENDS, TCP_PORT, UDP_PORT, World, require_root

if TYPE_CHECKING:
    from socklb.testing.lab import Lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh, empty :class:`socklb.testing.lab.Lab` (node namespace only); closed after the test."""
    require_root()
    from socklb.testing.lab import Lab

    with Lab() as the_lab:
        yield the_lab


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    require_root()
    from socklb.testing.lab import Lab

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
