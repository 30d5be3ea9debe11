"""The one module that imports the compiled extension, and the one error path.

Every native call returns 0 (or a positive count) or a negative errno;
:func:`check` turns the latter into the typed exception, so no other module
interprets errno values.
"""

from __future__ import annotations

import errno as _errno
import socket

from socklb.errors import KernelError, PermissionDeniedError

try:
    from socklb._native._lib import ffi, lib
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "socklb's native extension is not built: install the package with pip "
        "(it needs clang and libbpf-dev), see the README"
    ) from e

__all__ = ["ffi", "lib", "check", "htons", "possible_cpus", "LAYOUT_VERSION"]

LAYOUT_VERSION: int = lib.SOCKLB_LAYOUT_VERSION


def htons(port: int) -> int:
    """A port as the u16 that holds it in network byte order on this host."""
    return socket.htons(port)


def check(rc: int, op: str) -> int:
    """Return ``rc`` if it is not negative, else raise the exception for ``-rc``."""
    if rc < 0:
        err = -rc
        if err in (_errno.EPERM, _errno.EACCES):
            raise PermissionDeniedError(op, err)
        raise KernelError(op, err)
    return rc


def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n
