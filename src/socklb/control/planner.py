"""Planning: from what is programmed and what is wanted to the map writes.

Pure with respect to the kernel: :func:`plan` reads a :class:`State` (the
Python view of the maps) and a set of wanted services and returns a
:class:`Plan`; nothing is written.  The only thing it changes is the
reservation of fresh ids in the state's allocators, which the writer either
commits or gives back (:meth:`State.abort`).

Pure Python too: how services are packed into rows is the
:class:`~socklb.control.codec.Codec` the caller gives (:class:`socklb.Balancer`
gives :data:`socklb.control.encode.NATIVE`); the limits are a
:class:`~socklb.datapath.limits.Limits`.  This module imports nothing that
needs the native extension (an import-linter contract says so), so its unit
tests run without one (``./run unit``).

How an update stays atomic for the datapath: a service's selectable backends
live in a *list* (slots, or a Maglev table) under a list id.  A change writes
the new backends and a new list first, then swaps the service's list id in
one map update, and only then deletes the old list and the removed backends.
A ``connect()`` that runs meanwhile sees the old list or the new one; if it
read the old one just before its deletion, it reads the service again.

>>> from socklb.model import Service, Backend
>>> from socklb.control.encode import NATIVE
>>> st = State()
>>> p = plan(st, {("10.96.0.10", 80, "tcp"): Service("10.96.0.10", 80, backends=[Backend("10.1.0.1", 80)])},
...          Limits(), codec=NATIVE, terminate=False)
>>> len(p.backend_upd), len(p.slot_upd), len(p.svc_upd), p.writes
(1, 1, 1, 3)
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from itertools import accumulate, compress, filterfalse, repeat
from operator import attrgetter, is_, itemgetter, not_
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Sized, Tuple, Union, cast

from socklb.control.codec import Codec, Version
from socklb.datapath.limits import Limits
from socklb.errors import CapacityError
from socklb.model import Algorithm, BackendState, Protocol, Service, ServiceKey

__all__ = ["Ids", "Programmed", "State", "Plan", "plan", "Garbage"]


class Rows:
    """Map elements to write, packed as the loader's bulk update takes them:
    every key in one buffer, every value in another (no object per element,
    so a large plan leaves no fragmented heap behind)."""

    __slots__ = ("key_size", "keys", "n", "values")

    def __init__(self, key_size: int) -> None:
        self.key_size = key_size
        self.keys = bytearray()
        self.values = bytearray()
        self.n = 0

    def add(self, key: bytes, value: bytes) -> None:
        self.keys += key
        self.values += value
        self.n += 1

    def extend(self, keys: Union[bytes, bytearray], values: Union[bytes, bytearray], n: int) -> None:
        """``n`` rows at once, their keys and values each concatenated (a
        bytearray given to empty rows is kept, not copied)."""
        if not self.n and isinstance(keys, bytearray) and isinstance(values, bytearray):
            self.keys, self.values = keys, values
        else:
            self.keys += keys
            self.values += values
        self.n += n

    def __len__(self) -> int:
        return self.n

    def key_list(self, start: int = 0) -> List[bytes]:
        """The keys of rows ``start``.. as separate values."""
        ks, raw = self.key_size, self.keys
        return [bytes(raw[i * ks : (i + 1) * ks]) for i in range(start, self.n)]


def _total(*parts: Sized) -> int:
    return sum(map(len, parts))


class Reserved:
    """Ids a plan reserved, kept as the ranges they were taken in: the
    5,000,000 backend ids of a large first sync are a few hundred thousand
    ``range`` objects, not 5,000,000 ints."""

    __slots__ = ("_ones", "_parts", "_removed")

    def __init__(self) -> None:
        self._parts: List[Sequence[int]] = []
        self._ones: List[int] = []
        self._removed: Set[int] = set()

    def append(self, i: int) -> None:
        self._ones.append(i)
        self._removed.discard(i)

    def extend(self, ids: Sequence[int]) -> None:
        self._parts.append(ids)
        if self._removed:
            self._removed.difference_update(ids)

    def remove(self, i: int) -> None:
        if i not in self:
            raise ValueError(f"id {i} is not reserved")
        self._removed.add(i)

    def __contains__(self, i: object) -> bool:
        if i in self._removed:
            return False
        return i in self._ones or any(i in part for part in self._parts)

    def __iter__(self) -> Iterator[int]:
        removed = self._removed
        for part in self._parts:
            for i in part:
                if i not in removed:
                    yield i
        for i in self._ones:
            if i not in removed:
                yield i

    def __len__(self) -> int:
        return sum(map(len, self._parts)) + len(self._ones) - len(self._removed)


class Ids:
    """Allocator of non-zero ids (u32) that are not reused until the counter wraps.

    Until then an id is new by construction and nothing is recorded: a
    controller with 500,000 backends keeps no set of them.  When the counter
    wraps, the ids still in use are read once from ``in_use`` (plus those
    taken since the state last committed or aborted), and from then on every
    id taken is recorded and every id given back is forgotten.
    """

    def __init__(self, in_use: Callable[[], Iterable[int]], limit: int = 0xFFFFFFFF) -> None:
        self._in_use = in_use
        self._limit = limit
        self._next = 1
        self._used: Optional[Set[int]] = None  # recorded only once the counter wrapped
        self._recent: List[Iterable[int]] = []  # ranges taken since the last settle()
        self._recent_ones: List[int] = []  # single ids taken since then

    def settle(self) -> None:
        """What was taken is now in the state (committed) or given back (aborted)."""
        self._recent.clear()
        self._recent_ones.clear()

    def _wrap(self) -> Set[int]:
        used = set(self._in_use())
        for r in self._recent:
            used.update(r)
        used.update(self._recent_ones)
        self._used, self._next = used, 1
        return used

    def take(self) -> int:
        used = self._used
        if used is None:
            i = self._next
            if i <= self._limit:
                self._next = i + 1
                self._recent_ones.append(i)
                return i
            used = self._wrap()
        for _ in range(self._limit):
            i = self._next
            self._next = i + 1 if i < self._limit else 1
            if i not in used:
                used.add(i)
                return i
        raise CapacityError("ids", self._limit + 1, self._limit)

    def take_many(self, n: int) -> Sequence[int]:
        """n ids; a contiguous range unless the counter is about to wrap."""
        start = self._next
        if self._used is None and start + n - 1 <= self._limit:
            r = range(start, start + n)
            self._next = start + n
            self._recent.append(r)
            return r
        return [self.take() for _ in range(n)]

    def give(self, i: int) -> None:
        if self._used is not None:
            self._used.discard(i)

    def mark(self, i: int) -> None:
        """Record an id found in use (adopting pinned state)."""
        if self._used is not None:
            self._used.add(i)
        if i >= self._next:
            self._next = i + 1  # past the limit: the next take wraps


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
        return _total(self.services, self.slots, self.maglev, self.backends, self.doomed, self.affinity_purge)


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

    def commit(self, p: Plan) -> None:
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

    def abort(self, p: Plan) -> None:
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


@dataclass
class Plan:
    """Map writes for a batch of service changes, in the order they are applied,
    packed by ``codec``."""

    codec: Codec
    backend_upd: Rows = field(init=False)  # new backends, before the swap
    slot_upd: Rows = field(init=False)
    maglev_upd: Rows = field(init=False)
    svc_upd: Rows = field(init=False)  # the swap
    svc_del: List[bytes] = field(default_factory=list)  # the swap of removed services
    backend_post: Rows = field(init=False)  # kept backends' new state, after the swap
    slot_del: List[bytes] = field(default_factory=list)
    maglev_del: List[Tuple[bytes, int]] = field(default_factory=list)
    backend_del: List[Tuple[bytes, int]] = field(default_factory=list)
    free_list_ids: List[int] = field(default_factory=list)
    doomed: List[int] = field(default_factory=list)  # backend ids whose connected sockets are terminated
    doomed_tcp: bool = False
    affinity_purge: List[int] = field(default_factory=list)  # svc ids whose affinity entries go
    # What is programmed once the swap is done (None: removed).
    live: Dict[ServiceKey, Optional[Programmed]] = field(default_factory=dict)
    added: List[ServiceKey] = field(default_factory=list)  # the keys of live new to the maps, in order
    free_svc_ids: List[int] = field(default_factory=list)
    # Ids reserved by this plan, given back if it is not applied.
    new_svc_ids: Reserved = field(default_factory=Reserved)
    new_list_ids: Reserved = field(default_factory=Reserved)
    new_backend_ids: Reserved = field(default_factory=Reserved)

    def __post_init__(self) -> None:
        c = self.codec
        self.backend_upd, self.slot_upd = Rows(c.id_key_size), Rows(c.slot_key_size)
        self.maglev_upd, self.svc_upd = Rows(c.id_key_size), Rows(c.svc_key_size)
        self.backend_post = Rows(c.id_key_size)

    @property
    def writes(self) -> int:
        return _total(self.backend_upd, self.backend_post, self.slot_upd, self.maglev_upd, self.svc_upd) + _total(
            self.svc_del, self.slot_del, self.maglev_del, self.backend_del
        )


def plan(
    state: State,
    want: Mapping[ServiceKey, Optional[Service]],
    spec: Limits,
    *,
    codec: Codec,
    terminate: bool,
    exclusive: bool = False,
) -> Plan:
    """The writes that take ``state`` to ``want`` (None removes a key;
    services not named are kept, or removed if ``exclusive``), packed by
    ``codec``.  Checks capacity against ``spec`` before anything else; raises
    CapacityError with nothing reserved."""
    live = state.services
    n_services, n_backends, n_maglev = len(live), state.n_backends, state.n_maglev
    changed: List[Tuple[ServiceKey, Optional[Service], Optional[Programmed]]] = []
    items: Iterable[Tuple[ServiceKey, Optional[Service]]] = want.items()
    if len(want) > 64 and not state.has_dirty():
        # What a sync of the same list mostly finds is the very service that is
        # programmed: filtered out by C loops (a dict-items lookup compares the
        # values by identity first), so 50,000 of them cost a millisecond or two.
        items = list(filterfalse(state.values.items().__contains__, items))
    items = list(items)
    keys = list(map(_first, items))
    if exclusive:
        # Every wanted key is programmed but those of the new services: if as
        # many are programmed as there are, none is left to remove.
        if len(want) - len(items) + sum(map(live.__contains__, keys)) != len(live):
            gone = [(k, None) for k in live.keys() - want.keys()]
            items += gone
            keys += map(_first, gone)
    get = live.get
    # Services new to the maps, apart: counted and planned in bulk.
    new_keys: List[ServiceKey] = []
    new: List[Service] = []
    if len(keys) > 64 and list(map(get, keys)).count(None) == len(keys):
        # None of them is programmed (a first sync): told apart by C loops.
        values = list(map(_second, items))
        if not any(map(is_, values, repeat(None))):
            new_keys, new, items = keys, cast(List[Service], values), []
    for k, svc in items:
        old = get(k)
        if svc is None:
            if old is not None:
                n_services -= 1
                n_backends -= len(old.ids)
                n_maglev -= old.service.algorithm is Algorithm.MAGLEV
                changed.append((k, None, old))
            continue
        if old is None:
            new_keys.append(k)
            new.append(svc)
            continue
        if old.service == svc and not old.dirty:
            continue  # an equal value: the cached hashes differ unless it is
        n_backends -= len(old.ids)
        n_maglev -= old.service.algorithm is Algorithm.MAGLEV
        n_backends += len(svc.backends)
        if svc.algorithm is Algorithm.MAGLEV:
            n_maglev += 1
            _check_maglev(svc, spec)
        changed.append((k, svc, old))
    if new:
        n_services += len(new)
        n_backends += sum(map(len, map(_backends_of, new)))
        maglev = Algorithm.MAGLEV
        for svc in compress(new, [a is maglev for a in map(_algorithm_of, new)]):
            n_maglev += 1
            _check_maglev(svc, spec)
    spec.check_capacity(n_services, n_backends, n_maglev)

    p = Plan(codec)
    # The new services go live in the order given (whichever path plans
    # them): Balancer.sync's positional fast path relies on that order.
    p.live = dict.fromkeys(new_keys)
    p.added = new_keys
    try:
        if len(new) >= BULK_MIN:
            rest = _add_new(p, state, new_keys, new)
            new = [new[i] for i in rest]
            new_keys = [new_keys[i] for i in rest]
        for k, svc in zip(new_keys, new):
            _upsert(p, state, k, svc, None, spec, terminate)
        for k, svc, old in changed:
            if svc is None:
                assert old is not None
                _remove(p, k, old, terminate)
            else:
                _upsert(p, state, k, svc, old, spec, terminate)
    except BaseException:
        state.abort(p)
        raise
    return p


BULK_MIN = 8
"""New services planned one by one below this many (the bulk path's fixed
cost is a few C calls)."""

_backends_of = attrgetter("backends")
_algorithm_of = attrgetter("algorithm")
_service_of = attrgetter("service")
_first, _second = itemgetter(0), itemgetter(1)
_ids_of = attrgetter("ids")


def _check_maglev(svc: Service, spec: Limits) -> None:
    if len(svc.backends) > spec.maglev_size:
        # A table of M entries can name at most M backends.
        raise CapacityError(f"backends of maglev service {svc}", len(svc.backends), spec.maglev_size)


def _add_new(p: Plan, state: State, keys: List[ServiceKey], services: List[Service]) -> List[int]:
    """Plan services new to the maps in bulk: the uniform ones (see
    :class:`~socklb.control.codec.UniformRowsLike`; natively, packed in C) and
    recorded with C loops; returns the indexes of the others, left to
    :func:`_upsert`."""
    rows = p.codec.uniform_rows(services)
    mask = rows.mask
    rest = list(compress(range(len(services)), map(not_, mask)))
    if not rows.n:
        return rest
    svc_ids = state.svc_ids.take_many(rows.n)
    p.new_svc_ids.extend(svc_ids)
    list_ids = state.list_ids.take_many(rows.n)
    p.new_list_ids.extend(list_ids)
    backend_ids = state.backend_ids.take_many(rows.n_backends)
    p.new_backend_ids.extend(backend_ids)
    if not isinstance(backend_ids, range):
        backend_ids = array("I", backend_ids)
    sk, sv, bk, bv, lk, lv = rows.pack(svc_ids, list_ids, backend_ids)
    counts = rows.counts()
    p.svc_upd.extend(sk, sv, rows.n)
    p.backend_upd.extend(bk, bv, rows.n_backends)
    p.slot_upd.extend(lk, lv, rows.n_backends)
    # Each service's backend ids: a slice of the plan's (a range stays a range).
    ids: List[Sequence[int]]
    if isinstance(backend_ids, range):
        starts = list(accumulate(counts, initial=backend_ids.start))
        ids = list(map(range, starts, starts[1:]))
    else:
        ids = [backend_ids[a : a + c] for a, c in zip(accumulate(counts, initial=0), counts)]
    kept = list(compress(services, mask))
    p.live.update(
        zip(compress(keys, mask), map(Programmed, kept, svc_ids, list_ids, ids, counts, counts, repeat(p.codec)))
    )
    return rest


_is_dirty = attrgetter("dirty")


def _remove(p: Plan, k: ServiceKey, old: Programmed, terminate: bool) -> None:
    codec = p.codec
    p.svc_del.append(old.key)
    _drop_list(p, old)
    key = codec.id_key
    p.backend_del.extend([(key(bid), bid) for bid in old.ids])
    p.free_svc_ids.append(old.svc_id)
    _doom(p, old.service, old.chosen_ids(), terminate)
    if old.service.affinity is not None:
        p.affinity_purge.append(old.svc_id)
    p.live[k] = None


def _drop_list(p: Plan, old: Programmed) -> None:
    if old.service.algorithm is Algorithm.MAGLEV and old.count:
        p.maglev_del.append((p.codec.id_key(old.list_id), old.list_id))
    kp, lid = p.codec.slot_key, old.list_id
    p.slot_del.extend([kp(lid, i) for i in range(old.n_slots)])
    p.free_list_ids.append(old.list_id)


def _upsert(
    p: Plan, state: State, k: ServiceKey, svc: Service, old: Optional[Programmed], spec: Limits, terminate: bool
) -> None:
    codec = p.codec
    if old is None:
        svc_id = state.svc_ids.take()
        p.new_svc_ids.append(svc_id)
    else:
        svc_id = old.svc_id
        if (old.service.affinity is None) != (svc.affinity is None):
            # Switching affinity on or off starts from a clean slate, both ways.
            p.affinity_purge.append(svc_id)

    bs = svc.backends
    u32 = codec.id_key
    bval = codec.backend_value
    ids: Sequence[int]
    if old is None:
        # A new service: every backend is new (the common case of a full sync).
        ids = state.backend_ids.take_many(len(bs))
        p.new_backend_ids.extend(ids)
        if not isinstance(ids, range):
            ids = array("I", ids)
        p.backend_upd.extend(codec.id_keys(ids), codec.backend_values(bs, svc_id), len(bs))
    else:
        # Backends the new version adds are written before the swap; the
        # datapath state of kept ones only after it, so that the version the
        # maps describe is always the old or the new one.
        was = {(b._a16, b.port): (b, bid) for b, bid in zip(old.service.backends, old.ids)}
        new_ids = array("I")
        for b in bs:
            v = bval(b, svc_id)
            kept = was.get((b._a16, b.port))
            if kept is None:
                bid = state.backend_ids.take()
                p.new_backend_ids.append(bid)
                p.backend_upd.add(u32(bid), v)
            else:
                bid = kept[1]
                if old.dirty or (kept[0] is not b and bval(kept[0], svc_id) != v):
                    p.backend_post.add(u32(bid), v)
            new_ids.append(bid)
        ids = new_ids

    version = codec.encode(svc, ids)
    maglev = svc.algorithm is Algorithm.MAGLEV
    old_version = None if old is None or old.dirty else old.version()
    if (
        old_version is not None
        and old is not None
        and old_version.members == version.members
        and (old.service.algorithm is Algorithm.MAGLEV) == maglev
    ):
        list_id = old.list_id
    else:
        list_id = state.list_ids.take()
        p.new_list_ids.append(list_id)
        p.slot_upd.extend(*codec.slot_rows(list_id, version), len(version.members))
        if maglev and version.usable:
            p.maglev_upd.add(u32(list_id), codec.maglev_table(version, spec.maglev_size))
        if old is not None:
            _drop_list(p, old)

    key = codec.service_key(svc)
    value = codec.service_value(svc, svc_id, list_id, version)
    if (
        old_version is None
        or old is None
        or codec.service_value(old.service, svc_id, old.list_id, old_version) != value
    ):
        p.svc_upd.add(key, value)
    if old is not None:
        keep_keys = {(b._a16, b.port) for b in bs}
        for ok, (_, bid) in was.items():
            if ok not in keep_keys:
                p.backend_del.append((u32(bid), bid))
        # Sockets stay on a backend that was chosen before, unless it was
        # removed or left the active state (a drained one keeps its sockets).
        chosen = {m.backend_id for m in version.members[: version.n_usable]}
        active = {bid for b, bid in zip(bs, ids) if b.state is BackendState.ACTIVE}
        keep = chosen | active
        old_chosen = (
            [m.backend_id for m in old_version.members[: old.count]] if old_version is not None else old.chosen_ids()
        )
        gone = [bid for bid in old_chosen if bid not in keep]
        _doom(p, svc, gone, terminate)
    p.live[k] = Programmed(svc, svc_id, list_id, ids, version.n_usable, len(version.members), codec)


def _doom(p: Plan, svc: Service, ids: List[int], terminate: bool) -> None:
    if not ids or not terminate:
        return
    if svc.protocol is Protocol.UDP:
        p.doomed.extend(ids)
    elif svc.terminate_tcp:
        p.doomed.extend(ids)
        p.doomed_tcp = True
