"""The lab's one exception."""

from __future__ import annotations

from socklb.errors import SocklbError

__all__ = ["LabError"]


class LabError(SocklbError):
    """Building or tearing down a lab (namespaces, veths, cgroups) failed."""
