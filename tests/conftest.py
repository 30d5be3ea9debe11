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
