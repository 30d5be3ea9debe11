"""What the planner is given to turn services into map rows: the :class:`Codec`.

The planner (:mod:`socklb.control.planner`) decides which rows to write and
which ids to reserve; how a service, a backend or a slot is packed into the
bytes of a map is not its business.  It is handed a :class:`Codec`: socklb's
own, :data:`socklb.control.encode.NATIVE`, packs the records of
``csrc/socklb_maps.h`` (and builds Maglev tables) with the native extension;
a test may give a pure-Python one, so that the planner runs with no extension
built.  This module is pure Python, like the planner.

A :class:`Version` is what a codec's :meth:`Codec.encode` says the maps hold
for one version of a service: the planner compares two of them to decide
whether a service keeps its list.
"""

from __future__ import annotations

from typing import List, NamedTuple, Protocol, Sequence, Tuple

from socklb.model import Backend, Service

__all__ = ["Codec", "Member", "UniformRowsLike", "Version"]


class Member(NamedTuple):
    """One slot of a list: a backend of one version of a service.  A
    selectable slot is also a cell of the list's alias table: the datapath
    takes ``backend_id`` with probability ``keep / 2**32``, else ``alias_id``.
    The slot in the map also holds the address of a selectable slot's backend
    (:meth:`Codec.slot_rows`), which is the backend's, not kept here."""

    backend_id: int
    alias_id: int
    keep: int
    weight: int
    user_state: int


class Version(NamedTuple):
    """One version of a service as the maps hold it."""

    usable: Tuple[Backend, ...]
    """The backends the datapath picks from (slots 0..count-1)."""
    members: Tuple[Member, ...]
    """The list: usable backends first, with cumulative weights, then the rest."""
    flags: int
    algo: int
    """The algorithm the datapath runs (equal weights need no alias table)."""
    total_weight: int

    @property
    def n_usable(self) -> int:
        return len(self.usable)


class UniformRowsLike(Protocol):
    """The rows of many services new to the maps, packed at once (see
    :class:`socklb.control.encode.UniformRows`): ``mask[i]`` says whether
    ``services[i]`` is packed here (*uniform*: its rows are exactly those
    :meth:`Codec.encode` and the per-row functions give); :attr:`n` and
    :attr:`n_backends` count those services and their backends."""

    @property
    def mask(self) -> Sequence[int]: ...

    @property
    def n(self) -> int: ...

    @property
    def n_backends(self) -> int: ...

    def counts(self) -> List[int]:
        """The backends of each uniform service, in order."""
        ...

    def pack(
        self, svc_ids: Sequence[int], list_ids: Sequence[int], backend_ids: Sequence[int]
    ) -> Tuple[bytearray, bytearray, bytearray, bytearray, bytearray, bytearray]:
        """(service keys, service values, backend keys, backend values, slot
        keys, slot values) of the uniform services, each concatenated: the
        k-th has ``svc_ids[k]`` and ``list_ids[k]``, its backends the next of
        ``backend_ids`` in order."""
        ...


class Codec(Protocol):
    """The packing a plan is made with: record sizes, the rows of one service,
    the bulk rows of many new ones, Maglev tables.

    Keys of the backend and Maglev maps are ids (``id_key``); a slot's key is
    its list id and index.  Every function is pure: equal arguments give equal
    bytes, so the planner may compare what it packed before with what it
    packs now.
    """

    @property
    def svc_key_size(self) -> int: ...

    @property
    def slot_key_size(self) -> int: ...

    @property
    def id_key_size(self) -> int:
        """The size of a backend's or a Maglev table's key (an id)."""
        ...

    def id_key(self, i: int) -> bytes: ...

    def id_keys(self, ids: Sequence[int]) -> bytes:
        """:meth:`id_key` of each of ``ids``, concatenated."""
        ...

    def slot_key(self, list_id: int, index: int) -> bytes: ...

    def encode(self, svc: Service, ids: Sequence[int]) -> Version:
        """The list and selection parameters of ``svc``, its backends named by
        ``ids`` (the id of each of ``svc.backends``, in that order)."""
        ...

    def service_key(self, svc: Service) -> bytes: ...

    def service_value(self, svc: Service, svc_id: int, list_id: int, version: Version) -> bytes: ...

    def backend_value(self, b: Backend, svc_id: int) -> bytes: ...

    def backend_values(self, bs: Sequence[Backend], svc_id: int) -> bytes:
        """:meth:`backend_value` of each of ``bs``, concatenated."""
        ...

    def slot_rows(self, list_id: int, version: Version) -> Tuple[bytes, bytes]:
        """The keys and the values of a list's slots, each concatenated."""
        ...

    def maglev_table(self, version: Version, size: int) -> bytes:
        """The Maglev table (``size`` ids) of a version's usable backends."""
        ...

    def uniform_rows(self, services: Sequence[Service]) -> UniformRowsLike:
        """The bulk rows of ``services``, all new to the maps."""
        ...
