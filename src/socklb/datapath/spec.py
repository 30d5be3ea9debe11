"""What a datapath is made of, before it exists: limits, map sizes, pin paths.

A :class:`DatapathSpec` is a validated value (like cilium/ebpf's
CollectionSpec); :class:`~socklb.datapath.live.Datapath` is the live object loaded
from it.  Its limits and their arithmetic (the headroom rule, capacity checks)
are pure Python, :class:`~socklb.datapath.limits.Limits`; this module adds what
the native loader reads (the config and meta records) and checks that the
limits' constants agree with ``csrc/socklb_maps.h``.

>>> spec = DatapathSpec(max_services=100, max_backends=1000)
>>> spec.map_entries()["services"], spec.map_entries()["slots"]
(200, 2000)
>>> DatapathSpec(max_services=0)
Traceback (most recent call last):
...
socklb.errors.InvalidValueError: max_services: must be an integer in 1..16777216, not 0
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from socklb._native import abi, ffi, lib
from socklb.datapath.limits import DEFAULT_UDP_FLOWS, HEADROOM, MAX_UDP_FLOWS, Limits

__all__ = ["DatapathSpec", "PinPaths", "HEADROOM", "MAX_ATTACHMENTS", "DEFAULT_UDP_FLOWS", "MAX_UDP_FLOWS"]

MAX_ATTACHMENTS: int = lib.SOCKLB_MAX_ATTACHMENTS
"""Pinned attachments recorded per balancer (the attachments map)."""

if (DEFAULT_UDP_FLOWS, MAX_UDP_FLOWS) != (
    lib.SOCKLB_DEFAULT_UDP_FLOWS,
    lib.SOCKLB_MAX_UDP_FLOWS,
):  # pragma: no cover - the two must agree
    raise ImportError("socklb: datapath.limits' UDP flow bounds differ from socklb_maps.h's")


@dataclass(frozen=True)
class DatapathSpec(Limits):
    """Limits of one balancer, fixed when it is made (see
    :class:`~socklb.datapath.limits.Limits` for the parameters), and the
    records the loader sizes the maps from."""

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
