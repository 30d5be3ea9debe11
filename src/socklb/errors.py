"""The socklb exception hierarchy.

Every failure socklb reports is an instance of :class:`SocklbError`.  Errors
that come from the kernel carry the ``errno`` and, where it applies, the
verifier log; invalid input raises :class:`InvalidValueError`, which is also a
:class:`ValueError` and names the field that was wrong.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Optional

__all__ = [
    "SocklbError",
    "InvalidValueError",
    "KernelError",
    "PermissionDeniedError",
    "NotCgroupV2Error",
    "MissingFeatureError",
    "VerifierError",
    "CapacityError",
    "ClosedError",
    "NotFoundError",
    "PinLockedError",
    "IncompatiblePinsError",
]


class SocklbError(Exception):
    """Base class of every error raised by socklb."""


class InvalidValueError(SocklbError, ValueError):
    """An argument is not valid; ``field`` names it.

    Raised before anything is written, so the programmed state is unchanged.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class KernelError(SocklbError, OSError):
    """A system call failed.  ``errno`` and ``strerror`` are set; ``op`` names the call."""

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        self.op = op
        msg = f"{op}: {os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        OSError.__init__(self, err, msg)

    def __str__(self) -> str:
        return str(self.strerror)


class PermissionDeniedError(KernelError, PermissionError):
    """The caller lacks the privileges that loading or attaching BPF programs needs."""

    def __init__(self, op: str, err: int = _errno.EPERM) -> None:
        super().__init__(
            op,
            err,
            "loading and attaching cgroup BPF programs needs CAP_BPF and CAP_NET_ADMIN, or CAP_SYS_ADMIN: run as root",
        )


class NotCgroupV2Error(SocklbError, ValueError):
    """The path given to ``attach()`` is not a directory on a cgroup v2 hierarchy."""

    def __init__(self, path: str, reason: str, mount: Optional[str] = None) -> None:
        self.path = path
        self.mount = mount
        where = f"; cgroup v2 is mounted at {mount}" if mount else "; no cgroup v2 mount was found"
        super().__init__(f"{path}: {reason}: socket load balancing needs a cgroup v2 directory{where}")


class MissingFeatureError(SocklbError):
    """The running kernel lacks a feature socklb needs.

    ``feature`` names it and ``kernel`` is the first Linux version that has it.
    """

    def __init__(self, feature: str, kernel: str, detail: str = "") -> None:
        self.feature = feature
        self.kernel = kernel
        msg = f"the kernel lacks {feature} (needs Linux {kernel} or newer)"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class VerifierError(KernelError):
    """The kernel's verifier rejected a program; ``log`` holds the verifier's output."""

    def __init__(self, op: str, err: int, log: str) -> None:
        self.log = log
        tail = "\n".join(log.strip().splitlines()[-20:])
        super().__init__(op, err, f"verifier log follows\n{tail}" if tail else "no verifier log")


class CapacityError(SocklbError):
    """A limit set when the balancer was created would be exceeded; nothing was written."""

    def __init__(self, what: str, needed: int, limit: int) -> None:
        self.what = what
        self.needed = needed
        self.limit = limit
        super().__init__(f"{what}: {needed} needed but the balancer was created with a limit of {limit}")


class ClosedError(SocklbError):
    """The object was closed and can no longer be used."""


class NotFoundError(SocklbError, KeyError):
    """The named service or attachment does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class PinLockedError(SocklbError):
    """Another process owns the pin directory (it holds the directory's lock)."""

    def __init__(self, pin_dir: str, pid: Optional[int]) -> None:
        self.pin_dir = pin_dir
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{pin_dir} is owned by {who}: one balancer at a time may use a pin directory")


class IncompatiblePinsError(SocklbError):
    """The pinned maps were written with another map layout; they are refused,
    never misread.  ``found`` and ``expected`` are the layout versions."""

    def __init__(self, pin_dir: str, found: int, expected: int, detail: str = "") -> None:
        self.pin_dir = pin_dir
        self.found = found
        self.expected = expected
        msg = (
            f"{pin_dir} holds maps of layout version {found}, this socklb uses {expected}; "
            "no migration exists between them: remove socklb's pins with socklb.datapath.pins.remove(pin_dir), "
            "which removes "
            "only socklb's own entries (not the whole directory) and detaches what they attach, or run the socklb "
            "version that wrote them"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
