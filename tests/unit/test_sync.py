"""The sync arithmetic (socklb.control.sync) over the pure planner: what a
sync asks for and how a large one is cut into batches.  Pure Python, with no
native extension built (``./run unit``)."""

from __future__ import annotations

import os
import sys
from typing import List

import pytest
from fakes import FakeCodec

from socklb.control import planner, sync
from socklb.control.planner import Plan, State
from socklb.datapath.limits import Limits
from socklb.errors import CapacityError, InvalidValueError
from socklb.model import Backend, Service


def b(i: int) -> Backend:
    return Backend(f"10.244.0.{i}", 8080)


def svc(vip: int, *backends: int, **kw: object) -> Service:
    return Service(f"10.96.0.{vip}", 80, backends=[b(i) for i in backends], **kw)  # type: ignore[arg-type]


class Writer:
    """What Balancer._write does, with the fake codec: plan, then commit."""

    def __init__(self, state: State, spec: Limits) -> None:
        self.state, self.spec = state, spec
        self.batches: List[sync.Wanted] = []

    def __call__(self, want: sync.Wanted, exclusive: bool = False) -> Plan:
        self.batches.append(dict(want))
        p = planner.plan(self.state, want, self.spec, codec=FakeCodec(), terminate=True, exclusive=exclusive)
        self.state.commit(p)
        return p


def test_wanted_indexes_by_key_and_names_the_first_bad_entry() -> None:
    a, c = svc(1, 1), svc(2, 2)
    assert sync.wanted([a, c]) == {a.key: a, c.key: c}
    with pytest.raises(InvalidValueError, match=r"services\[1\]"):
        sync.wanted([a, "x"])  # type: ignore[list-item]
    with pytest.raises(InvalidValueError, match=r"services\[2\].*listed twice"):
        sync.wanted([a, c, svc(1, 3)])


def test_result_counts_what_a_plan_changed() -> None:
    st = State()
    w = Writer(st, Limits())
    w({svc(1, 1).key: svc(1, 1), svc(2, 2).key: svc(2, 2)})
    p = planner.plan(
        st,
        {svc(1, 1, 3).key: svc(1, 1, 3), svc(2).key: None, svc(3, 4).key: svc(3, 4)},
        Limits(),
        codec=FakeCodec(),
        terminate=True,
    )
    r = sync.result(p, 5)
    assert (r.added, r.updated, r.removed) == ((svc(3).key,), (svc(1).key,), (svc(2).key,))
    assert r.unchanged == 3 and r.map_writes == p.writes and r.changed


def test_batches_remove_first_then_shrink_then_grow_then_add() -> None:
    """The order that never needs more than the larger of now and the end state:
    here the end state is exactly the limit, and any other order exceeds it."""
    spec = Limits(max_services=3, max_backends=10)
    st = State()
    w = Writer(st, spec)
    w({s.key: s for s in (svc(1, 1, 2, 3, 4), svc(2, 5, 6, 7), svc(3, 8))})  # 8 backends
    want = sync.wanted([svc(2, 5, 6, 7, 9, 10), svc(3), svc(4, 11, 12, 13, 14)])  # 3 grows by 2, 1 goes
    r = sync.batched(w, st, spec, 3, want, exclusive=True, batch=1)
    assert [list(x) for x in w.batches[1:]] == [[svc(1).key], [svc(3).key], [svc(2).key], [svc(4).key]]
    assert (r.added, r.removed, set(r.updated)) == ((svc(4).key,), (svc(1).key,), {svc(2).key, svc(3).key})
    assert r.unchanged == 0 and st.n_backends == 9 and list(st.services) == [svc(2).key, svc(3).key, svc(4).key]


def test_batches_check_the_end_state_before_writing_anything() -> None:
    spec = Limits(max_services=2, max_backends=4, maglev_size=3)
    st = State()
    w = Writer(st, spec)
    w({svc(1, 1).key: svc(1, 1)})
    for want in (
        {svc(2, 2).key: svc(2, 2), svc(3, 3).key: svc(3, 3)},  # three services
        {svc(2, 2, 3, 4, 5).key: svc(2, 2, 3, 4, 5)},  # five backends
        {svc(2, 2, 3, 4, 5, algorithm="maglev").key: svc(2, 2, 3, 4, 5, algorithm="maglev")},  # over its table
    ):
        n = len(w.batches)
        with pytest.raises(CapacityError):
            sync.batched(w, st, spec, 2, want, exclusive=False, batch=1)
        assert len(w.batches) == n  # nothing written
    # Exclusive: the one not named goes first, so three fit where two are programmed.
    want = {svc(2, 2).key: svc(2, 2), svc(3, 3).key: svc(3, 3)}
    r = sync.batched(w, st, spec, 2, want, exclusive=True, batch=2)
    assert r.removed == (svc(1).key,) and sorted(r.added) == sorted(want)


def test_positional_changes_finds_the_replaced_entries() -> None:
    st = State()
    given = [Service(f"10.96.{i >> 8}.{i & 255}", 80, backends=[b(1)]) for i in range(1, 1501)]
    Writer(st, Limits())({s.key: s for s in given})
    assert sync.positional_changes(st, given[:100]) is None  # below the threshold: the general path
    again = list(given)
    again[7] = again[7].with_backends([b(2)])  # same key, new value
    again[9] = Service("10.97.0.1", 80, backends=[b(3)])  # another key in its place
    want = sync.positional_changes(st, again)
    assert want == {again[7].key: again[7], again[9].key: again[9], given[9].key: None}
    assert sync.positional_changes(st, given) == {}  # the same list: nothing
    # Two entries swapped: whatever it finds, planning it changes nothing.
    swapped = sync.positional_changes(st, [given[1], given[0], *given[2:]])
    assert swapped is None or planner.plan(st, swapped, Limits(), codec=FakeCodec(), terminate=True).writes == 0


def test_no_extension_was_imported() -> None:
    if os.environ.get("SOCKLB_PURE") == "1":
        assert not [m for m in sys.modules if m.startswith("socklb._native") or m.split(".")[0] == "cffi"]
