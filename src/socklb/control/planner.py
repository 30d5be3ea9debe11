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
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union, cast

from socklb.control.codec import Codec
from socklb.control.ids import Ids, Reserved
from socklb.control.state import Garbage, Programmed, State, total_len
from socklb.datapath.limits import Limits
from socklb.errors import CapacityError
from socklb.model import Algorithm, BackendState, Protocol, Service, ServiceKey

__all__ = ["Garbage", "Ids", "Plan", "Programmed", "Reserved", "Rows", "State", "check_end_state", "plan"]


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
        return total_len(self.backend_upd, self.backend_post, self.slot_upd, self.maglev_upd, self.svc_upd) + total_len(
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


def check_end_state(services: Iterable[Service], spec: Limits) -> None:
    """The capacity checks :func:`plan` runs, for an end state given whole
    (what ``socklb apply --dry-run`` checks, without a State): CapacityError
    for the first limit the services would exceed."""
    n_services = n_backends = n_maglev = 0
    for svc in services:
        n_services += 1
        n_backends += len(svc.backends)
        if svc.algorithm is Algorithm.MAGLEV:
            n_maglev += 1
            _check_maglev(svc, spec)
    spec.check_capacity(n_services, n_backends, n_maglev)


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
