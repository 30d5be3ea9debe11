"""The Python view of the kernel's tables: what is programmed, per service.

:class:`State` holds every :class:`Programmed` service, the totals the limits
are checked against, the id allocators (:mod:`socklb.control.ids`) and the
:class:`Garbage` still to clean up.  :func:`~socklb.control.planner.plan`
reads it; the writer commits a plan into it (or aborts it).  Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import Dict, Iterable, List, Optional, Protocol, Sequence, Sized, Tuple, cast

from socklb.control.codec import Codec, Version
from socklb.control.ids import Ids
from socklb.model import Algorithm, Service, ServiceKey

__all__ = ["Garbage", "PlanOutcome", "Programmed", "State", "total_len"]

_service_of = attrgetter("service")
_algorithm_of = attrgetter("algorithm")
_ids_of = attrgetter("ids")
_is_dirty = attrgetter("dirty")


class PlanOutcome(Protocol):
    """What :meth:`State.commit` and :meth:`State.abort` read of a plan
    (:class:`~socklb.control.planner.Plan`)."""

    @property
    def live(self) -> Dict[ServiceKey, Optional[Programmed]]: ...
    @property
    def free_svc_ids(self) -> List[int]: ...
    @property
    def new_svc_ids(self) -> Iterable[int]: ...
    @property
    def new_list_ids(self) -> Iterable[int]: ...
    @property
    def new_backend_ids(self) -> Iterable[int]: ...


def total_len(*parts: Sized) -> int:
    return sum(map(len, parts))


class Programmed:
    """What is programmed for one service: the service, its ids, and the
    sizes of its list.  Everything else the maps hold for it (its key and
    value, its slots) is a function of these and is computed again when a
    change needs it (:meth:`version`), so a programmed service costs a few
    hundred bytes of Python (``__slots__``, the backend ids as one ``range``
    or ``array``) on top of the :class:`Service` the caller gave.  ``codec``
    is the one its rows were packed with.
    """

    __slots__ = ("codec", "count", "dirty", "ids", "list_id", "n_members", "service", "svc_id")

    def __init__(
        self,
        service: Service,
        svc_id: int,
        list_id: int,
        ids: Sequence[int],
        count: int,
        n_members: int,
        codec: Codec,
        dirty: bool = False,
    ) -> None:
        self.service = service
        self.svc_id = svc_id
        self.list_id = list_id
        self.ids = ids
        """The backend id of each of ``service.backends``, in that order."""
        self.count = count
        """How many members of the list are usable (slots 0..count-1)."""
        self.n_members = n_members
        """How many slots the list has in the maps."""
        self.dirty = dirty
        """The maps may disagree with ``service``: rewrite it all on the next plan."""
        self.codec = codec

    @property
    def n_slots(self) -> int:
        return self.n_members

    @property
    def key(self) -> bytes:
        return self.codec.service_key(self.service)

    @property
    def value(self) -> bytes:
        return self.codec.service_value(self.service, self.svc_id, self.list_id, self.version())

    @property
    def backend_ids(self) -> Dict[Tuple[str, int], int]:
        """Backend ids by (address, port)."""
        return {(b.address, b.port): bid for b, bid in zip(self.service.backends, self.ids)}

    def version(self) -> Version:
        """The service's list as the maps hold it (for a service not dirty)."""
        return self.codec.encode(self.service, self.ids)

    def chosen_ids(self) -> List[int]:
        """Backend ids the datapath picks from (slots 0..count-1)."""
        return [m.backend_id for m in self.version().members[: self.count]]


@dataclass
class Garbage:
    """Entries no service refers to any more whose deletion has not happened
    yet (a failed post-swap step); deleted before the next plan is written.
    Their ids stay reserved until then."""

    services: List[bytes] = field(default_factory=list)
    slots: List[bytes] = field(default_factory=list)
    maglev: List[Tuple[bytes, int]] = field(default_factory=list)  # (key, list id)
    backends: List[Tuple[bytes, int]] = field(default_factory=list)  # (key, backend id)
    doomed: List[int] = field(default_factory=list)  # backend ids whose sockets are still to terminate
    doomed_tcp: bool = False
    affinity_purge: List[int] = field(default_factory=list)
    list_ids: List[int] = field(default_factory=list)  # freed once their slots are gone

    def __len__(self) -> int:
        return total_len(self.services, self.slots, self.maglev, self.backends, self.doomed, self.affinity_purge)


class State:
    """The Python view of the kernel's tables: every programmed service, the
    totals the limits are checked against, the id allocators and what is
    still to be cleaned up."""

    def __init__(self, id_limit: int = 0xFFFFFFFF) -> None:
        self.services: Dict[ServiceKey, Programmed] = {}
        self.values: Dict[ServiceKey, Service] = {}
        """The service of each entry of ``services``: what plan() compares a wanted list with, in C."""
        self.dirty_hint = False
        """Set by whoever marks a Programmed dirty: has_dirty() then looks."""
        self.n_backends = 0
        self.n_maglev = 0
        self.svc_ids = Ids(self._svc_ids_in_use, id_limit)
        self.list_ids = Ids(self._list_ids_in_use, id_limit)
        self.backend_ids = Ids(self._backend_ids_in_use, id_limit)
        self.garbage = Garbage()

    # What is in use when an id counter wraps (see Ids).
    def _svc_ids_in_use(self) -> Iterable[int]:
        return [p.svc_id for p in self.services.values()]

    def _list_ids_in_use(self) -> Iterable[int]:
        g = self.garbage
        return [p.list_id for p in self.services.values()] + g.list_ids + [i for _, i in g.maglev]

    def _backend_ids_in_use(self) -> Iterable[int]:
        ids = [i for p in self.services.values() for i in p.ids]
        return ids + [i for _, i in self.garbage.backends]

    def put(self, k: ServiceKey, p: Optional[Programmed]) -> None:
        """Record ``p`` as what is programmed for ``k`` (None: nothing)."""
        old = self.services.get(k)
        if old is not None:
            self.n_backends -= len(old.ids)
            self.n_maglev -= old.service.algorithm is Algorithm.MAGLEV
        if p is None:
            self.services.pop(k, None)
            self.values.pop(k, None)
        else:
            self.services[k] = p
            self.values[k] = p.service
            self.n_backends += len(p.ids)
            self.n_maglev += p.service.algorithm is Algorithm.MAGLEV

    def has_dirty(self) -> bool:
        """Whether a programmed service is marked dirty (looks only after a hint)."""
        if not self.dirty_hint:
            return False
        if any(map(_is_dirty, self.services.values())):
            return True
        self.dirty_hint = False
        return False

    def commit(self, p: PlanOutcome) -> None:
        """The plan's services are what the kernel serves now."""
        live = p.live
        if len(live) > 64 and None not in live.values() and self.services.keys().isdisjoint(live):
            # Every one is new (a first sync): recorded by C loops.
            self.services.update(cast(Dict[ServiceKey, Programmed], live))
            svcs = list(map(_service_of, live.values()))
            self.values.update(zip(live, svcs))
            self.n_backends += sum(map(len, map(_ids_of, live.values())))
            self.n_maglev += list(map(_algorithm_of, svcs)).count(Algorithm.MAGLEV)
        else:
            for k, lv in live.items():
                self.put(k, lv)
        for i in p.free_svc_ids:
            self.svc_ids.give(i)
        self._settle()

    def _settle(self) -> None:
        for ids in (self.svc_ids, self.list_ids, self.backend_ids):
            ids.settle()

    def abort(self, p: PlanOutcome) -> None:
        """Give back the ids a plan reserved and never used."""
        for i in p.new_svc_ids:
            self.svc_ids.give(i)
        for i in p.new_list_ids:
            self.list_ids.give(i)
        for i in p.new_backend_ids:
            self.backend_ids.give(i)
        self._settle()

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]
