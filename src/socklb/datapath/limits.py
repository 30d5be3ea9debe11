"""The limits of a datapath and their arithmetic, pure Python (no extension).

:class:`Limits` holds what a balancer is made with and checks it; the headroom
rule lives here and only here: maps hold :data:`HEADROOM` times the limits,
because an update writes a service's new entries before it deletes the old
ones (memory is used per entry, not per slot).  The planner checks capacity
against a :class:`Limits`; :class:`~socklb.datapath.spec.DatapathSpec` adds
what the native loader needs (the config and meta records).

>>> Limits(max_services=100, max_backends=1000).map_entries()["slots"]
2000
>>> Limits(max_services=1).check_capacity(2, 0, 0)
Traceback (most recent call last):
...
socklb.errors.CapacityError: services: 2 needed but the balancer was created with a limit of 1
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Dict

from socklb.errors import CapacityError, InvalidValueError

__all__ = [
    "Limits",
    "HEADROOM",
    "DEFAULT_MAGLEV_SIZE",
    "MAX_MAGLEV_SIZE",
    "DEFAULT_UDP_FLOWS",
    "MAX_UDP_FLOWS",
    "is_prime",
    "check_maglev_size",
]

HEADROOM = 2
"""Map entries per unit of limit (see the module docstring)."""
DEFAULT_MAGLEV_SIZE = 16381
MAX_MAGLEV_SIZE = 131071
DEFAULT_UDP_FLOWS = 16
"""(service, backend) flows an unconnected UDP socket remembers by default
(SOCKLB_DEFAULT_UDP_FLOWS; socklb.datapath.spec checks the two agree)."""
MAX_UDP_FLOWS = 64
"""The most ``udp_flows_per_socket`` may be (SOCKLB_MAX_UDP_FLOWS)."""

_BOUNDS = {
    "max_services": 1 << 24,
    "max_backends": 1 << 26,
    "max_maglev_services": 1 << 20,
    "max_affinity": 1 << 26,
    "udp_flows_per_socket": MAX_UDP_FLOWS,
}


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def check_maglev_size(size: object, field: str = "maglev_size") -> int:
    try:
        n = operator.index(size)  # type: ignore[arg-type]
    except TypeError:
        n = -1
    if isinstance(size, bool) or not 2 < n <= MAX_MAGLEV_SIZE or not is_prime(n):
        raise InvalidValueError(field, f"must be a prime in 3..{MAX_MAGLEV_SIZE}, not {size!r}")
    return int(n)


def _limit(name: str, value: object) -> int:
    hi = _BOUNDS[name]
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        n = -1
    if isinstance(value, bool) or not 1 <= n <= hi:
        raise InvalidValueError(name, f"must be an integer in 1..{hi}, not {value!r}")
    return int(n)


@dataclass(frozen=True)
class Limits:
    """Limits of one balancer, fixed when it is made.

    :param max_services: services (VIP, port, protocol) at once.
    :param max_backends: service backends at once, summed over services.
    :param maglev_size: entries of each Maglev table, a prime.
    :param max_maglev_services: services that use Maglev at once.
    :param max_affinity: (client pod, service) affinity entries kept (LRU).
    :param udp_flows_per_socket: (service, backend) flows an unconnected UDP
        socket remembers, 1..MAX_UDP_FLOWS; each takes 52 bytes of the
        socket's storage, allocated when it first sends to a service.
    """

    max_services: int = 65536
    max_backends: int = 262144
    maglev_size: int = DEFAULT_MAGLEV_SIZE
    max_maglev_services: int = 1024
    max_affinity: int = 65536
    udp_flows_per_socket: int = DEFAULT_UDP_FLOWS

    def __post_init__(self) -> None:
        for name in _BOUNDS:
            object.__setattr__(self, name, _limit(name, getattr(self, name)))
        object.__setattr__(self, "maglev_size", check_maglev_size(self.maglev_size))

    def map_entries(self) -> Dict[str, int]:
        """max_entries of each sized map."""
        return {
            "services": HEADROOM * self.max_services,
            "backends": HEADROOM * self.max_backends,
            "selections": HEADROOM * self.max_backends,
            "slots": HEADROOM * self.max_backends,
            "maglev": HEADROOM * self.max_maglev_services,
            "affinity": self.max_affinity,
        }

    def check_capacity(self, services: int, backends: int, maglev: int) -> None:
        """CapacityError for the first total above its limit."""
        for what, n, limit in (
            ("services", services, self.max_services),
            ("backends", backends, self.max_backends),
            ("maglev services", maglev, self.max_maglev_services),
        ):
            if n > limit:
                raise CapacityError(what, n, limit)
