"""socklb: socket-level service load balancing with cgroup eBPF.

A ``connect()`` (or an unconnected UDP ``sendmsg()``) to a service address is
rewritten once, in the system call, to a chosen backend; replies and
``getpeername()`` show the service address.  No per-packet NAT.

>>> from socklb import Service, Backend
>>> Service("10.96.0.10", 80, backends=[Backend("10.244.2.1", 8080)]).key
('10.96.0.10', 80, 'tcp')
"""

from typing import TYPE_CHECKING, Any

from socklb.errors import (
    CapacityError,
    ClosedError,
    IncompatiblePinsError,
    InvalidValueError,
    KernelError,
    MissingFeatureError,
    NotCgroupV2Error,
    NotFoundError,
    PermissionDeniedError,
    PinLockedError,
    SocklbError,
    VerifierError,
)
from socklb.model import Affinity, Algorithm, Backend, BackendState, Frontend, Protocol, Service, ServiceKey

if TYPE_CHECKING:
    from socklb.balancer import Attachment, Balancer, ProgramStats, SyncResult

__version__ = "0.1.0"

# The names of the façade, imported when first used: the values and errors
# above are pure Python, and so is socklb.control.planner, whose unit tests
# import this package with no native extension built (./run unit).
_FACADE = frozenset(("Attachment", "Balancer", "ProgramStats", "SyncResult"))


def __getattr__(name: str) -> Any:
    if name in _FACADE:
        from socklb import balancer

        value = getattr(balancer, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Affinity",
    "Algorithm",
    "Attachment",
    "Backend",
    "BackendState",
    "Balancer",
    "Frontend",
    "CapacityError",
    "ClosedError",
    "IncompatiblePinsError",
    "InvalidValueError",
    "KernelError",
    "MissingFeatureError",
    "NotCgroupV2Error",
    "NotFoundError",
    "PermissionDeniedError",
    "PinLockedError",
    "ProgramStats",
    "Protocol",
    "Service",
    "ServiceKey",
    "SocklbError",
    "SyncResult",
    "VerifierError",
    "__version__",
]
