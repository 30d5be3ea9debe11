"""Writing a plan to the maps, with one commit point.

The order (see :mod:`socklb.control.planner`): new backends, new lists and Maglev
tables, then **the swap** (service entries written and removed).  A failure
up to and including the swap is rolled back: the kernel and the
:class:`~socklb.control.state.State` keep the previous version, and the error is
raised.

Right after the swap the state is **committed**: from then on the kernel
serves the new version and ``Balancer.services()`` says so, whatever happens
next.  What follows is clean-up: kept backends' new state, deleting the old
lists and removed backends, terminating sockets still connected to removed
backends, purging affinity entries.  A failure there is not raised: it is
logged and left in the state's :class:`~socklb.control.state.Garbage`, retried
before the next plan is written (or by ``Balancer.reconcile()``); a kept
backend whose new state could not be written marks its service dirty, so the
next plan rewrites it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from socklb._native import check, ffi, lib
from socklb._native.abi import SLOT_KEY, U32
from socklb.control import encode, planner
from socklb.control.nodes import Node
from socklb.control.planner import Plan, Rows
from socklb.control.state import State
from socklb.control.stats import WriteStats
from socklb.control.terminate import Terminator
from socklb.datapath.live import Map, update_rows_parallel, write_threads
from socklb.datapath.spec import DatapathSpec
from socklb.errors import KernelError
from socklb.model import Service, ServiceKey

__all__ = ["Tables", "apply", "collect", "write", "PARALLEL_MIN_ROWS"]

log = logging.getLogger("socklb")

PARALLEL_MIN_ROWS = 65536
"""A plan writing at least this many new backends, slots and Maglev tables
writes them from several threads (one per CPU): the kernel's inserts are
most of a large first sync."""

Terminate = Callable[[List[int], bool], int]
"""Terminates sockets connected to the given backend ids (TCP too if True)."""


@dataclass(frozen=True)
class Tables:
    """The maps a plan is written to."""

    services: Map
    slots: Map
    backends: Map
    maglev: Map
    affinity: Map
    selections: Optional[Map] = None
    """Per-backend selection counters (deleted with their backends)."""


def write(
    state: State,
    want: Mapping[ServiceKey, Optional[Service]],
    spec: DatapathSpec,
    tables: Tables,
    terminator: Terminator,
    node: Node,
    stats: WriteStats,
    exclusive: bool = False,
) -> Plan:
    """One plan from ``state`` to ``want`` (:func:`socklb.control.planner.plan`),
    written (:func:`apply`), the node's wildcard ports following, its duration
    observed in ``stats``: what every ``Balancer`` update does."""
    t0 = time.monotonic()
    ok = False
    try:
        p = planner.plan(state, want, spec, codec=encode.NATIVE, terminate=terminator.enabled, exclusive=exclusive)
        try:
            apply(tables, state, p, terminator)
        finally:
            node.sync_wild_ports(state.services, p.live)
        ok = True
        return p
    finally:
        stats.observe(time.monotonic() - t0, ok)


def apply(t: Tables, state: State, p: Plan, terminate: Terminate) -> None:
    """Write ``p``; see the module docstring for what a failure leaves."""
    collect(t, state, terminate)
    written: List[Tuple[Map, Rows]] = []
    fresh = [(t.backends, p.backend_upd), (t.slots, p.slot_upd), (t.maglev, p.maglev_upd)]
    try:
        threads = write_threads()
        if threads > 1 and sum(len(rows) for _, rows in fresh) >= PARALLEL_MIN_ROWS:
            # New keys only, none referred to before the swap: written from
            # several threads at once, every part attempted (all rolled back
            # on a failure).
            written += fresh
            update_rows_parallel(fresh, threads)
        else:
            for m, rows in fresh:
                written.append((m, rows))
                m.update_rows(rows)
        t.services.update_rows(p.svc_upd)
        t.services.delete(p.svc_del)
    except BaseException:
        _rollback(t, state, p, written)
        state.abort(p)
        raise

    # -- the commit point --------------------------------------------------
    state.commit(p)

    try:
        t.backends.update_rows(p.backend_post)
    except KernelError as e:
        log.warning("socklb: %s; the services concerned are rewritten on the next update", e)
        _dirty_from(state, p, p.backend_post.key_list(_done(e)))
    g = state.garbage
    g.slots += p.slot_del
    g.maglev += p.maglev_del
    g.backends += p.backend_del
    g.list_ids += p.free_list_ids
    g.doomed += p.doomed
    g.doomed_tcp |= p.doomed_tcp
    g.affinity_purge += p.affinity_purge
    collect(t, state, terminate)


def collect(t: Tables, state: State, terminate: Terminate) -> None:
    """Carry out the clean-up still pending in ``state.garbage``: never
    raises; what fails stays pending (and is logged)."""
    g = state.garbage
    if not g and not g.list_ids:
        return
    g.services = _delete(t.services, g.services)
    g.slots = _delete(t.slots, g.slots)
    g.maglev = _delete_owned(t.maglev, g.maglev, None)
    if t.selections is not None and g.backends:
        # Best effort: a counter left behind is only a stale number; ids
        # are not reused until the id counter wraps.
        _delete(t.selections, [k for k, _ in g.backends])
    g.backends = _delete_owned(t.backends, g.backends, state.backend_ids.give)
    if not g.slots and not g.maglev:
        # A list id is free once its slots and its Maglev table are gone.
        for i in g.list_ids:
            state.list_ids.give(i)
        g.list_ids = []
    if g.doomed:
        try:
            terminate(sorted(set(g.doomed)), g.doomed_tcp)
            g.doomed, g.doomed_tcp = [], False
        except Exception as e:  # clean-up never raises; it is retried
            log.warning("socklb: %s; retried on the next update", e)
    if g.affinity_purge:
        ids = sorted(set(g.affinity_purge))
        try:
            check(
                lib.socklb_affinity_purge(t.affinity.fd, ffi.new("uint32_t[]", ids), len(ids)),
                "purge of affinity entries",
            )
            g.affinity_purge = []
        except KernelError as e:
            log.warning("socklb: %s; retried on the next update", e)


def _done(e: BaseException) -> int:
    """How many elements of a failed batch were written or deleted."""
    return int(getattr(e, "done", 0))


def _delete(m: Map, keys: List[bytes]) -> List[bytes]:
    """Delete ``keys``; returns those that may still be there."""
    try:
        m.delete(keys)
        return []
    except KernelError as e:
        log.warning("socklb: %s; retried on the next update", e)
        return keys[_done(e) :]


def _delete_owned(
    m: Map, entries: List[Tuple[bytes, int]], give: Optional[Callable[[int], None]]
) -> List[Tuple[bytes, int]]:
    """Delete (key, id) entries; the ids of those gone are given back."""
    left = _delete(m, [k for k, _ in entries])
    n_gone = len(entries) - len(left)
    if give is not None:
        for _, i in entries[:n_gone]:
            give(i)
    return entries[n_gone:]


def _dirty_from(state: State, p: Plan, keys: Sequence[bytes]) -> None:
    """Kept backends whose new state was not written: their services are
    rewritten by the next plan."""
    failed = {U32.unpack(k)[0] for k in keys}
    for lv in p.live.values():
        if lv is not None and not failed.isdisjoint(lv.ids):
            lv.dirty = True
            state.dirty_hint = True


def _rollback(t: Tables, state: State, p: Plan, written: List[Tuple[Map, Rows]]) -> None:
    """Undo a plan that failed before or during the swap.  Before the swap
    only new keys are written (new backends, lists, tables): delete them; put
    back the service entries that a partial batch may have swapped or removed.
    What cannot be undone is marked so the next update repairs it."""
    # The state is not committed yet: it holds what the plan's services were.
    by_key = {lv.key: lv for lv in (state.services.get(k) for k in p.live) if lv is not None}
    for key in p.svc_upd.key_list() + p.svc_del:
        old = by_key.get(key)
        try:
            if old is not None:
                t.services.update(key, old.value, 1)
            else:
                t.services.delete([key])
        except Exception:  # the first error is what is raised
            if old is not None:
                old.dirty = True  # the next plan rewrites it all, its service entry too
                state.dirty_hint = True
            else:
                state.garbage.services.append(key)
    for m, rows in reversed(written):
        left = _delete(m, rows.key_list())
        if not left:
            continue
        # Still there: kept as garbage, its id stays reserved until it goes.
        if m is t.slots:
            state.garbage.slots += left
            for lid in {SLOT_KEY.unpack(k).list_id for k in left}:
                if lid in p.new_list_ids:
                    p.new_list_ids.remove(lid)
                    state.garbage.list_ids.append(lid)
            continue
        reserved = p.new_backend_ids if m is t.backends else p.new_list_ids
        for k in left:
            i = U32.unpack(k)[0]
            if i in reserved:
                reserved.remove(i)
            if m is t.backends:
                state.garbage.backends.append((k, i))
            else:
                state.garbage.maglev.append((k, i))
                state.garbage.list_ids.append(i)
