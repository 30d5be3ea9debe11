"""What a datapath is made of, before it exists: limits, map sizes, pin paths.

A :class:`DatapathSpec` is a pure, validated value (like cilium/ebpf's
CollectionSpec); :class:`~socklb.datapath.live.Datapath` is the live object loaded
from it.  The headroom rule lives here and only here: maps hold
:data:`HEADROOM` times the limits, because an update writes a service's new
entries before it deletes the old ones (memory is used per entry, not per slot).

>>> spec = DatapathSpec(max_services=100, max_backends=1000)
>>> spec.map_entries()["services"], spec.map_entries()["slots"]
(200, 2000)
>>> DatapathSpec(max_services=0)
Traceback (most recent call last):
...
socklb.errors.InvalidValueError: max_services: must be an integer in 1..16777216, not 0
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from socklb._native import abi, ffi, lib
from socklb.errors import CapacityError, InvalidValueError

__all__ = ["DatapathSpec", "PinPaths", "HEADROOM", "MAX_ATTACHMENTS", "DEFAULT_UDP_FLOWS", "MAX_UDP_FLOWS"]

HEADROOM = 2
"""Map entries per unit of limit (see the module docstring)."""
MAX_ATTACHMENTS: int = lib.SOCKLB_MAX_ATTACHMENTS
"""Pinned attachments recorded per balancer (the attachments map)."""

_BOUNDS = {
    "max_services": 1 << 24,
    "max_backends": 1 << 26,
    "max_maglev_services": 1 << 20,
    "max_affinity": 1 << 26,
    "udp_flows_per_socket": lib.SOCKLB_MAX_UDP_FLOWS,
}
DEFAULT_UDP_FLOWS: int = lib.SOCKLB_DEFAULT_UDP_FLOWS
"""(service, backend) flows an unconnected UDP socket remembers by default."""
MAX_UDP_FLOWS: int = lib.SOCKLB_MAX_UDP_FLOWS
"""The most ``udp_flows_per_socket`` may be."""


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
class DatapathSpec:
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
    maglev_size: int = abi.DEFAULT_MAGLEV_SIZE
    max_maglev_services: int = 1024
    max_affinity: int = 65536
    udp_flows_per_socket: int = DEFAULT_UDP_FLOWS

    def __post_init__(self) -> None:
        for name in _BOUNDS:
            object.__setattr__(self, name, _limit(name, getattr(self, name)))
        object.__setattr__(self, "maglev_size", abi.check_maglev_size(self.maglev_size))

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

    def config(self) -> Any:
        """The ``struct socklb_config`` the loader sizes the maps from."""
        e = self.map_entries()
        cfg = ffi.new("struct socklb_config *")
        cfg.max_services, cfg.max_backends, cfg.max_slots = e["services"], e["backends"], e["slots"]
        cfg.max_affinity, cfg.max_maglev, cfg.maglev_size = e["affinity"], e["maglev"], self.maglev_size
        cfg.udp_flows = self.udp_flows_per_socket
        return cfg

    def meta(self) -> bytes:
        """The record of the pinned ``meta`` map: what the maps were made with."""
        e = self.map_entries()
        return abi.META.pack(
            magic=lib.SOCKLB_META_MAGIC,
            layout_version=lib.SOCKLB_LAYOUT_VERSION,
            max_services=e["services"],
            max_backends=e["backends"],
            max_slots=e["slots"],
            max_affinity=e["affinity"],
            maglev_size=self.maglev_size,
            max_maglev=e["maglev"],
            udp_flows=self.udp_flows_per_socket,
        )

    @classmethod
    def from_meta(cls, meta: Any) -> DatapathSpec:
        """The spec a pinned ``meta`` record (unpacked) was written from."""
        return cls(
            max_services=meta.max_services // HEADROOM,
            max_backends=meta.max_backends // HEADROOM,
            maglev_size=meta.maglev_size,
            max_maglev_services=meta.max_maglev // HEADROOM,
            max_affinity=meta.max_affinity,
            udp_flows_per_socket=meta.udp_flows,
        )

    def check_capacity(self, services: int, backends: int, maglev: int) -> None:
        for what, n, limit in (
            ("services", services, self.max_services),
            ("backends", backends, self.max_backends),
            ("maglev services", maglev, self.max_maglev_services),
        ):
            if n > limit:
                raise CapacityError(what, n, limit)


@dataclass(frozen=True)
class PinPaths:
    """Where a pinned balancer keeps its state::

    <root>/maps/<map name>
    <root>/links/<cgroup id>/<program name>
    """

    root: str

    @property
    def maps(self) -> str:
        return os.path.join(self.root, "maps")

    @property
    def meta(self) -> str:
        return os.path.join(self.root, "maps", "meta")

    @property
    def links(self) -> str:
        return os.path.join(self.root, "links")

    def link_dir(self, cgroup_id: int) -> str:
        return os.path.join(self.root, "links", str(cgroup_id))


def optional_pin_paths(pin_dir: Optional[str]) -> Optional[PinPaths]:
    return PinPaths(pin_dir) if pin_dir is not None else None
