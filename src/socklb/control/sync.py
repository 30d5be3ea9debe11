"""What a :meth:`~socklb.Balancer.sync` asks for, and how a large one is cut.

A sync names every service that should be programmed.  :func:`wanted` indexes
the list by key (refusing a non-Service or a key listed twice);
:func:`positional_changes` finds, without hashing, the few entries a controller
replaced in the very list it passed before; :func:`batched` writes a large
change as several plans, in an order that never needs more capacity than the
larger of now and the end state.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress, count
from operator import attrgetter, is_not
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from typing_extensions import TypeAlias

from socklb.control.planner import Plan
from socklb.control.state import State
from socklb.datapath.limits import Limits
from socklb.errors import CapacityError, InvalidValueError, NotFoundError
from socklb.model import Algorithm, Service, ServiceKey, normalize_key

__all__ = [
    "SyncResult",
    "Wanted",
    "batch",
    "batched",
    "check_removals",
    "checked",
    "positional_changes",
    "result",
    "wanted",
]

Wanted: TypeAlias = Dict[ServiceKey, Optional[Service]]
"""Services by key; None removes the key."""

_skey_of = attrgetter("_skey")


@dataclass(frozen=True)
class SyncResult:
    """What :meth:`Balancer.sync` (or :meth:`Balancer.apply`) changed, by service key."""

    added: Tuple[ServiceKey, ...] = ()
    updated: Tuple[ServiceKey, ...] = ()
    removed: Tuple[ServiceKey, ...] = ()
    unchanged: int = 0
    map_writes: int = 0
    """Map elements written or deleted."""

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def result(p: Plan, n_given: int) -> SyncResult:
    """The result of one plan written for ``n_given`` services."""
    added = p.added
    updated: List[ServiceKey] = []
    removed: List[ServiceKey] = []
    if len(added) != len(p.live):
        new = set(added)
        for k, lv in p.live.items():
            if lv is None:
                removed.append(k)
            elif k not in new:
                updated.append(k)
    unchanged = n_given - len(added) - len(updated)
    return SyncResult(tuple(added), tuple(updated), tuple(removed), unchanged, p.writes)


def wanted(given: Sequence[Service]) -> Wanted:
    """The services by key; InvalidValueError naming the first one that is
    not a Service or is listed twice.  The checks and the index are C loops."""
    if not set(map(type, given)) <= {Service}:
        for i, s in enumerate(given):
            if not isinstance(s, Service):
                raise InvalidValueError(f"services[{i}]", f"must be a Service, not {type(s).__name__}")
    want: Wanted = dict(zip(map(_skey_of, given), given))
    if len(want) != len(given):
        seen = set()
        for i, s in enumerate(given):
            if s.key in seen:
                raise InvalidValueError(f"services[{i}]", f"service {s} is listed twice")
            seen.add(s.key)
    return want


def checked(services: Iterable[Service], batch: Optional[int]) -> Sequence[Service]:
    """sync()'s arguments checked: the services as a sequence."""
    if services is None or isinstance(services, (str, bytes, Service)):
        raise InvalidValueError("services", f"must be an iterable of Service, not {services!r}")
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise InvalidValueError("batch", f"must be a positive integer or None, not {batch!r}")
    return services if isinstance(services, (list, tuple)) else list(services)


def batch(upserts: Iterable[Service], removals: Iterable[Any]) -> Wanted:
    """What :meth:`Balancer.apply` asks for, as one plan's :data:`Wanted`;
    InvalidValueError for a key named twice (or upserted and removed), a
    value that is not a Service or a key."""
    for name, arg in (("upserts", upserts), ("removals", removals)):
        if arg is None or isinstance(arg, (str, bytes, Service)):
            raise InvalidValueError(name, f"must be an iterable, not {arg!r}")
    want = wanted(upserts if isinstance(upserts, (list, tuple)) else list(upserts))
    for i, r in enumerate(removals):
        try:
            k = normalize_key(r)
        except InvalidValueError as e:
            raise InvalidValueError(f"removals[{i}]", str(e)) from None
        if k in want:
            what = "upserted and removed" if want[k] is not None else "listed twice"
            raise InvalidValueError(f"removals[{i}]", f"service {k} is {what}")
        want[k] = None
    return want


def check_removals(st: State, want: Wanted, missing_ok: bool) -> int:
    """NotFoundError (as ``Balancer.remove`` raises it) for a removal of a key
    that is not programmed, unless ``missing_ok``; returns how many services
    ``want`` upserts."""
    upserts = 0
    live = st.services
    for k, v in want.items():
        if v is not None:
            upserts += 1
        elif not missing_ok and k not in live:
            raise NotFoundError(f"no service {k}")
    return upserts


def positional_changes(st: State, given: Sequence[Service]) -> Optional[Wanted]:
    """What a controller that passes the same list again, a few entries
    replaced, asks for: the services that are not the very objects
    programmed at their position (in the order first programmed), and the
    keys they replaced that are gone.  One C loop over pointers finds them
    (no hashing, no attribute read).  None when the list is not such a
    list (reordered, many changes, a duplicate, not a Service): then the
    general path decides, and raises for what is invalid."""
    if len(given) < 1024 or not st.values:
        return None
    cur = list(st.values.values())
    diff = list(compress(count(), map(is_not, given, cur)))
    if len(diff) + abs(len(given) - len(cur)) > max(64, len(given) >> 6):
        return None
    new = [given[i] for i in diff] + list(given[len(cur) :])
    replaced = {cur[i]._skey for i in diff} | {s._skey for s in cur[len(given) :]}
    want: Wanted = {}
    live = st.values
    for s in new:
        if s.__class__ is not Service:
            return None
        k = s._skey
        if k in want or (k in live and k not in replaced):
            return None  # listed twice: the general path names it
        want[k] = s
    for k in replaced:
        if k not in want:
            want[k] = None
    if st.has_dirty():
        for k, lv in st.services.items():
            if lv.dirty and k not in want:
                want[k] = lv.service
    return want


def batched(
    write: Callable[[Wanted], Plan],
    st: State,
    spec: Limits,
    n_given: int,
    want: Mapping[ServiceKey, Optional[Service]],
    exclusive: bool,
    batch: int,
) -> SyncResult:
    """A sync written in plans of at most ``batch`` services (see Balancer.sync)."""
    live = st.services
    maglev, maglev_size = Algorithm.MAGLEV, spec.maglev_size
    # Removals first, then updates by growth (shrinking ones first), then new services:
    # the programmed total never exceeds the larger of now and the end state.
    removals: List[ServiceKey] = []
    updates: List[Tuple[int, ServiceKey]] = []
    adds: List[ServiceKey] = []  # keys only: a first sync of 50,000 makes no tuple per service
    n_services, n_backends, n_maglev = len(live), st.n_backends, st.n_maglev
    for k, svc in want.items():
        old = live.get(k)
        if svc is None:
            if old is not None:
                removals.append(k)
            continue
        if old is not None and old.service == svc and not old.dirty:
            continue
        n_backends += len(svc.backends)
        if svc.algorithm is maglev:
            n_maglev += 1
            if len(svc.backends) > maglev_size:
                raise CapacityError(f"backends of maglev service {svc}", len(svc.backends), maglev_size)
        if old is None:
            n_services += 1
            adds.append(k)
        else:
            n_backends -= len(old.ids)
            n_maglev -= old.service.algorithm is maglev
            updates.append((len(svc.backends) - len(old.ids), k))
    if exclusive:
        removals.extend(live.keys() - want.keys())
    for k in removals:
        old = live[k]
        n_services -= 1
        n_backends -= len(old.ids)
        n_maglev -= old.service.algorithm is maglev
    spec.check_capacity(n_services, n_backends, n_maglev)
    updates.sort(key=lambda u: u[0])
    order = removals + [k for _, k in updates] + adds
    del updates, adds
    added: List[ServiceKey] = []
    updated: List[ServiceKey] = []
    removed: List[ServiceKey] = []
    writes = 0
    get = want.get
    for i in range(0, len(order), batch):
        p = write({k: get(k) for k in order[i : i + batch]})
        writes += p.writes
        new_ids = set(p.new_svc_ids)
        for k, lv in p.live.items():
            if lv is None:
                removed.append(k)
            elif lv.svc_id in new_ids:
                added.append(k)
            else:
                updated.append(k)
        del p
    return SyncResult(tuple(added), tuple(updated), tuple(removed), n_given - len(added) - len(updated), writes)
