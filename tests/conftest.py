"""Fixtures shared by the tests; helper functions are in helpers.py.

The tests are in three folders, marked here by folder (the markers are
declared in pyproject.toml, run with ``--strict-markers``):

* ``tests/unit/``: no root, no kernel (``pytest -m "not root"``);
* ``tests/datapath/``: ``root``: real BPF hooks and sockets in lab namespaces;
* ``tests/system/``: ``root`` and ``lab``: end to end (the lab itself, examples,
  demo, benchmarks, kernels, the Kubernetes agent on real balancers).

``slow`` marks the tests that take more than 10 s (``-m "not slow"``).

Random inputs come from the ``seed`` fixture (``SOCKLB_TEST_SEED``, printed in
the header and with every failure of a test that drew from it)."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import BACKENDS, TCP_PORT, UDP_PORT, World, require_root

if TYPE_CHECKING:
    from socklb.testing.lab import Lab

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"unit": (), "datapath": ("root",), "system": ("root", "lab")}

SEED_ENV = "SOCKLB_TEST_SEED"
DEFAULT_SEED = 20211
"""The seed of every random generator of the tests unless SOCKLB_TEST_SEED says otherwise."""


def run_seed() -> int:
    """The seed of this run: SOCKLB_TEST_SEED, else DEFAULT_SEED."""
    return int(os.environ.get(SEED_ENV, DEFAULT_SEED))


def pytest_report_header(config: pytest.Config) -> str:
    return f"{SEED_ENV}={run_seed()} (set it to reproduce a run of the randomised tests with another seed)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its folder: datapath -> root; system -> root, lab."""
    for item in items:
        try:
            folder = Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        for name in FOLDER_MARKERS.get(folder, ()):
            item.add_marker(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that drew from the seed says which seed to reproduce it with."""
    report = yield
    if report.failed and "seed" in getattr(item, "fixturenames", ()):
        report.sections.append(("seed", f"{SEED_ENV}={run_seed()} (set it to run again with this seed)"))
    return report


@pytest.fixture
def seed() -> int:
    """The seed for a test's random generators (``random.Random(seed)``)."""
    return run_seed()


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


@pytest.fixture
def pin_dir() -> Iterator[str]:
    """A unique pin directory below /sys/fs/bpf (not created), removed at the end even on failure."""
    from pinned import pinned_dir

    with pinned_dir() as pd:
        yield pd
