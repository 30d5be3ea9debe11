"""The planner's unit tests: pure Python, with no native extension built.

The planner is given a fake codec (``fakes.FakeCodec``, fixed-size struct
packing) and pure limits (:class:`socklb.datapath.limits.Limits`); nothing
here imports ``socklb._native`` or cffi.  ``./run unit`` runs this file in a
venv that has neither (``.venv-pure``); the last test checks that the
extension was never imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from array import array
from typing import Any, Dict, List, Optional, Tuple

import pytest
from fakes import BACKEND_VAL, SLOT_VAL, SVC_VAL, FakeCodec, decode_svc_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import socklb
from socklb.control import planner
from socklb.control.planner import Plan, State
from socklb.datapath.limits import Limits
from socklb.errors import CapacityError
from socklb.model import Affinity, Backend, Service, ServiceKey

VIP = "10.96.0.10"
DEFAULT = Limits()
Want = Dict[ServiceKey, Optional[Service]]


def b(i: int, **kw: object) -> Backend:
    return Backend(f"10.244.0.{i}", 8080, **kw)  # type: ignore[arg-type]


def svc(*backends: Backend, vip: str = VIP, **kw: object) -> Service:
    return Service(vip, 80, backends=backends, **kw)  # type: ignore[arg-type]


def plan(
    st: State,
    *services: Service,
    remove: Tuple[ServiceKey, ...] = (),
    spec: Limits = DEFAULT,
    codec: Optional[FakeCodec] = None,
    terminate: bool = True,
    exclusive: bool = False,
) -> Plan:
    want: Want = {x.key: x for x in services}
    want.update({k: None for k in remove})
    return planner.plan(st, want, spec, codec=codec or FakeCodec(), terminate=terminate, exclusive=exclusive)


def rows(r: planner.Rows, value_size: int) -> List[Tuple[bytes, bytes]]:
    ks = r.key_size
    assert len(r.keys) == r.n * ks and len(r.values) == r.n * value_size
    return [
        (bytes(r.keys[i * ks : (i + 1) * ks]), bytes(r.values[i * value_size : (i + 1) * value_size]))
        for i in range(r.n)
    ]


def many(n: int, backends: int = 2, **kw: object) -> List[Service]:
    return [
        Service(f"10.96.{i >> 8}.{i & 255}", 80, backends=[b(1 + (i + j) % 200) for j in range(backends)], **kw)  # type: ignore[arg-type]
        for i in range(1, n + 1)
    ]


# --- a new service; ids reserved and given back ----------------------------------


def test_a_new_service_is_written_once_and_nothing_is_committed() -> None:
    st = State()
    p = plan(st, svc(b(1), b(2), b(3)))
    assert (len(p.backend_upd), len(p.slot_upd), len(p.svc_upd)) == (3, 3, 1)
    assert p.writes == 7 and not p.svc_del and not p.backend_post and not p.maglev_upd
    assert p.added == [(VIP, 80, "tcp")] and p.codec is not None
    assert st.services == {} and st.n_backends == 0  # planning commits nothing
    assert (list(p.new_svc_ids), list(p.new_list_ids), list(p.new_backend_ids)) == ([1], [1], [1, 2, 3])
    ((key, value),) = rows(p.svc_upd, SVC_VAL.size)
    assert key == FakeCodec().service_key(svc())
    assert decode_svc_value(value)[:5] == (1, 1, 3, 3, 3)  # ids, count, total weight, members


def test_commit_records_the_service_and_a_second_plan_writes_nothing() -> None:
    st = State()
    s = svc(b(1), b(2))
    st.commit(plan(st, s))
    lv = st.services[s.key]
    assert (lv.svc_id, lv.list_id, list(lv.ids), lv.count, lv.n_members) == (1, 1, [1, 2], 2, 2)
    assert st.values[s.key] is s and st.n_backends == 2 and st.n_maglev == 0
    assert plan(st, s).writes == 0
    assert plan(st, svc(b(1), b(2))).writes == 0  # an equal value, not the same object


def test_abort_gives_every_reserved_id_back() -> None:
    st = State(id_limit=8)
    p = plan(st, svc(b(1), b(2), b(3)))
    assert list(p.new_backend_ids) == [1, 2, 3]
    st.abort(p)
    p = plan(st, svc(b(1), b(2), b(3), b(4), b(5)))
    assert list(p.new_backend_ids) == [4, 5, 6, 7, 8]  # not reused before the counter wraps
    st.commit(p)
    p = plan(st, svc(b(6), b(7), b(8), vip="10.96.0.11"))
    assert sorted(p.new_backend_ids) == [1, 2, 3]  # wrapped: the aborted ones


def test_a_failing_plan_gives_back_what_it_took() -> None:
    """An error after some ids were taken (here: the ids run out) aborts the plan:
    the backend ids it recorded are free again (the counter has wrapped; the
    service ids 1 and 2 are not reused before it wraps)."""
    st = State(id_limit=4)
    with pytest.raises(CapacityError) as e:
        plan(st, svc(b(1), b(2), b(3)), svc(b(4), b(5), vip="10.96.0.11"))
    assert e.value.what == "ids" and st.services == {}
    p = plan(st, svc(b(1), b(2), b(3)))
    assert sorted(p.new_backend_ids) == [1, 2, 3] and list(p.new_svc_ids) == [3]


def test_removal_frees_the_service_id_at_commit() -> None:
    st = State(id_limit=2)
    a = svc(b(1))
    st.commit(plan(st, a))
    st.commit(plan(st, svc(b(2), vip="10.96.0.11")))
    p = plan(st, remove=(a.key,))
    assert p.free_svc_ids == [1] and p.free_list_ids == [1]
    st.commit(p)
    p = plan(st, svc(b(3), vip="10.96.0.12"))
    assert list(p.new_svc_ids) == [1]  # the counter wrapped and 1 is free again


def test_reserved_ids_are_kept_as_ranges() -> None:
    r = planner.Reserved()
    r.extend(range(1, 1001))
    r.append(5000)
    r.remove(7)
    assert len(r) == 1000 and 7 not in r and 8 in r and 5000 in r
    assert list(r)[:7] == [1, 2, 3, 4, 5, 6, 8]
    with pytest.raises(ValueError):
        r.remove(7)


# --- capacity ---------------------------------------------------------------------


def test_capacity_is_checked_before_anything_is_reserved() -> None:
    st = State()
    spec = Limits(max_services=1, max_backends=3)
    st.commit(plan(st, svc(b(1)), spec=spec))
    with pytest.raises(CapacityError) as e:
        plan(st, svc(b(2), vip="10.96.0.11"), spec=spec)
    assert (e.value.what, e.value.needed, e.value.limit) == ("services", 2, 1)
    with pytest.raises(CapacityError) as e:
        plan(st, svc(b(1), b(2), b(3), b(4)), spec=spec)
    assert (e.value.what, e.value.needed, e.value.limit) == ("backends", 4, 3)
    assert st.svc_ids.take() == 2 and st.backend_ids.take() == 2  # no id was leaked


def test_capacity_counts_the_end_state_of_the_plan() -> None:
    """A removal and an addition in one plan fit where the addition alone does not."""
    st = State()
    spec = Limits(max_services=1, max_backends=2)
    a = svc(b(1), b(2))
    st.commit(plan(st, a, spec=spec))
    p = plan(st, svc(b(3), b(4), vip="10.96.0.11"), remove=(a.key,), spec=spec)
    st.commit(p)
    assert list(st.services) == [("10.96.0.11", 80, "tcp")] and st.n_backends == 2
    # An update is counted as its new size, not old + new.
    st.commit(plan(st, svc(b(5), b(6), vip="10.96.0.11"), spec=spec))
    assert st.n_backends == 2


def test_maglev_services_are_counted_and_their_size_checked() -> None:
    st = State()
    spec = Limits(max_maglev_services=1, maglev_size=13)
    with pytest.raises(CapacityError) as e:
        plan(st, svc(*[b(i) for i in range(1, 21)], algorithm="maglev"), spec=spec)
    assert (e.value.needed, e.value.limit) == (20, 13)
    st.commit(plan(st, svc(b(1), algorithm="maglev"), spec=spec))
    assert st.n_maglev == 1
    with pytest.raises(CapacityError) as e:
        plan(st, svc(b(2), algorithm="maglev", vip="10.96.0.11"), spec=spec)
    assert e.value.what == "maglev services"
    # Turning the one Maglev service into a random one frees its place.
    st.commit(plan(st, svc(b(1)), svc(b(2), algorithm="maglev", vip="10.96.0.11"), spec=spec))
    assert st.n_maglev == 1


# --- updates ----------------------------------------------------------------------


def test_an_update_keeps_the_service_id_and_the_kept_backends_ids() -> None:
    st = State()
    st.commit(plan(st, svc(b(1), b(2))))
    old = st.services[(VIP, 80, "tcp")]
    p = plan(st, svc(b(1), b(3)))
    new = p.live[(VIP, 80, "tcp")]
    assert new is not None and new.svc_id == old.svc_id and new.list_id != old.list_id
    assert new.backend_ids[b(1)._key] == old.backend_ids[b(1)._key]
    assert list(p.new_backend_ids) == [3] and [i for _, i in p.backend_del] == [old.backend_ids[b(2)._key]]
    assert len(p.slot_del) == 2 and p.free_list_ids == [old.list_id] and not p.free_svc_ids
    assert p.added == [] and len(p.svc_upd) == 1 and len(p.backend_upd) == 1


def test_a_change_of_the_service_entry_only_keeps_the_list() -> None:
    st = State()
    s = svc(b(1), b(2))
    st.commit(plan(st, s))
    p = plan(st, svc(b(1), b(2), terminate_tcp=True))
    assert p.writes == 1 and len(p.svc_upd) == 1 and not p.new_list_ids and not p.slot_del


def test_a_kept_backends_new_state_is_written_after_the_swap() -> None:
    st = State()
    st.commit(plan(st, svc(b(1), b(2))))
    p = plan(st, svc(b(1), b(2, state="maintenance")))
    assert len(p.backend_post) == 1 and not p.backend_upd and not p.new_backend_ids


def test_affinity_switched_on_or_off_purges_its_entries() -> None:
    st = State()
    st.commit(plan(st, svc(b(1))))
    p = plan(st, svc(b(1), affinity=Affinity(60)))
    assert p.affinity_purge == [1]
    st.commit(p)
    assert plan(st, svc(b(1), affinity=Affinity(30))).affinity_purge == []
    assert plan(st, svc(b(1))).affinity_purge == [1]


def test_a_dirty_service_is_rewritten_whole() -> None:
    st = State()
    s = svc(b(1), b(2))
    st.commit(plan(st, s))
    assert not st.has_dirty()
    st.services[s.key].dirty = True
    st.dirty_hint = True
    assert st.has_dirty()
    p = plan(st, s)
    assert len(p.backend_post) == 2 and len(p.slot_upd) == 2 and len(p.svc_upd) == 1 and p.new_list_ids
    st.commit(p)
    assert not st.has_dirty() and not st.dirty_hint


# --- removal, terminate flags ----------------------------------------------------


def test_removal_deletes_everything_of_the_service() -> None:
    st = State()
    s = svc(b(1), b(2), affinity=Affinity())
    st.commit(plan(st, s))
    p = plan(st, remove=(s.key,))
    assert p.svc_del == [FakeCodec().service_key(s)] and len(p.backend_del) == 2 and len(p.slot_del) == 2
    assert p.affinity_purge == [1] and p.live == {s.key: None} and p.added == []
    st.commit(p)
    assert st.services == {} and st.values == {} and st.n_backends == 0
    assert plan(st, remove=(s.key,)).writes == 0  # removing what is not there: nothing


@pytest.mark.parametrize(
    ("kw", "terminate", "doomed", "tcp"),
    [
        ({"protocol": "udp"}, True, True, False),
        ({}, True, False, False),  # TCP sockets stay unless terminate_tcp
        ({"terminate_tcp": True}, True, True, True),
        ({"protocol": "udp"}, False, False, False),  # the balancer does not terminate
        ({"terminate_tcp": True}, False, False, False),
    ],
)
def test_terminate_flags(kw: Dict[str, Any], terminate: bool, doomed: bool, tcp: bool) -> None:
    st = State()
    st.commit(plan(st, svc(b(1), b(2), **kw)))
    gone = st.services[svc(**kw).key].backend_ids[b(2)._key]
    p = plan(st, svc(b(1), **kw), terminate=terminate)
    assert (p.doomed == [gone], p.doomed_tcp) == (doomed, tcp)
    p = plan(st, remove=(svc(**kw).key,), terminate=terminate)
    assert (sorted(p.doomed) == [1, 2], p.doomed_tcp) == (doomed, tcp)


def test_sockets_stay_on_a_drained_backend_but_not_on_one_in_maintenance() -> None:
    st = State()
    st.commit(plan(st, svc(b(1), b(2), b(3), protocol="udp")))
    p = plan(st, svc(b(1), b(2, weight=0), b(3, state="maintenance"), protocol="udp"))
    assert p.doomed == [3]


# --- exclusive sync -----------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 100])  # below and above the fast paths' threshold (64)
def test_exclusive_removes_what_is_not_named(n: int) -> None:
    st = State()
    svcs = many(n)
    st.commit(plan(st, *svcs))
    keep = svcs[1:]
    p = plan(st, *keep)
    assert p.writes == 0  # not exclusive: the others stay
    p = plan(st, *keep, exclusive=True)
    assert p.live == {svcs[0].key: None} and len(p.svc_del) == 1
    st.commit(p)
    assert list(st.services) == [s.key for s in keep]
    assert plan(st, *keep, exclusive=True).writes == 0


def test_exclusive_with_new_services_and_as_many_programmed() -> None:
    """As many wanted as programmed, but one is new: the one not named goes."""
    st = State()
    svcs = many(80)
    st.commit(plan(st, *svcs))
    new = svc(b(9), vip="10.96.200.1")
    p = plan(st, *svcs[1:], new, exclusive=True)
    assert p.live == {new.key: p.live[new.key], svcs[0].key: None} and p.added == [new.key]


# --- Maglev -----------------------------------------------------------------------


def test_maglev_tables_are_the_codecs_of_the_spec_size() -> None:
    st = State()
    codec = FakeCodec()
    spec = Limits(maglev_size=13)
    p = plan(st, svc(b(1), b(2), algorithm="maglev"), spec=spec, codec=codec)
    ((key, table),) = rows(p.maglev_upd, 13 * 4)
    lv = p.live[(VIP, 80, "tcp")]
    assert lv is not None and key == codec.id_key(lv.list_id)
    assert set(array("I", table)) == set(lv.ids)  # the fake's table: every usable backend's id
    assert codec.maglev_calls == 1
    st.commit(p)
    # A change of the service entry only keeps the list and its table.
    p = plan(st, svc(b(1), b(2), algorithm="maglev", terminate_tcp=True), spec=spec, codec=codec)
    assert not p.maglev_upd and not p.maglev_del and codec.maglev_calls == 1
    p = plan(st, svc(b(1), b(3), algorithm="maglev"), spec=spec, codec=codec)
    assert len(p.maglev_upd) == 1 and [i for _, i in p.maglev_del] == [1]
    p = plan(st, remove=((VIP, 80, "tcp"),), spec=spec, codec=codec)
    assert [i for _, i in p.maglev_del] == [1]


def test_a_maglev_service_without_usable_backends_has_no_table() -> None:
    st = State()
    p = plan(st, svc(b(1, state="maintenance"), algorithm="maglev"))
    assert not p.maglev_upd and len(p.slot_upd) == 1
    st.commit(p)
    assert not plan(st, remove=((VIP, 80, "tcp"),)).maglev_del


# --- batches and order ----------------------------------------------------------------


def test_many_new_services_go_live_in_the_order_given_on_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    svcs = many(100)
    svcs[10] = svcs[10].with_backends([b(1, weight=2), b(2)])  # not uniform: left to the per-service path
    svcs[20] = Service(svcs[20].address, 80, backends=[b(1)], algorithm="maglev")
    rnd_order = svcs[::-1]
    for bulk_min in (1, 1 << 30):
        monkeypatch.setattr(planner, "BULK_MIN", bulk_min)
        codec = FakeCodec()
        p = planner.plan(State(), {s.key: s for s in rnd_order}, DEFAULT, codec=codec, terminate=True)
        assert p.added == [s.key for s in rnd_order] == list(p.live)
        assert codec.bulk_calls == (1 if bulk_min == 1 else 0)


def _rows_of(p: Plan) -> Dict[str, List[Tuple[bytes, bytes]]]:
    return {
        "svc": sorted(rows(p.svc_upd, SVC_VAL.size)),
        "backends": sorted(rows(p.backend_upd, BACKEND_VAL.size)),
        "slots": sorted(rows(p.slot_upd, SLOT_VAL.size)),
        "maglev": sorted(rows(p.maglev_upd, DEFAULT.maglev_size * 4)),
    }


def test_the_bulk_path_gives_the_per_service_paths_rows_and_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniform services (every one here): the same ids in the same order, so the same bytes."""
    svcs = many(70, backends=3) + many(5, backends=1, protocol="udp", affinity=Affinity(10), terminate_tcp=True)
    plans, states = [], []
    for bulk_min in (1, 1 << 30):
        monkeypatch.setattr(planner, "BULK_MIN", bulk_min)
        st = State()
        p = planner.plan(st, {s.key: s for s in svcs}, DEFAULT, codec=FakeCodec(), terminate=True)
        st.commit(p)
        plans.append(p)
        states.append(st)
    bulk, each = plans
    assert _rows_of(bulk) == _rows_of(each)
    for sb, se in zip(*(s.services.values() for s in states)):
        assert (sb.svc_id, sb.list_id, list(sb.ids), sb.count, sb.n_members) == (
            se.svc_id,
            se.list_id,
            list(se.ids),
            se.count,
            se.n_members,
        )
    assert states[0].n_backends == states[1].n_backends == sum(len(s.backends) for s in svcs)


def test_mixed_new_services_end_in_the_same_state_on_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    svcs = many(70, backends=3)
    svcs[3] = svcs[3].with_backends([b(1, state="terminating"), b(2)])
    svcs[5] = Service(svcs[5].address, 80, backends=[b(1), b(2)], algorithm="maglev")
    states = []
    for bulk_min in (1, 1 << 30):
        monkeypatch.setattr(planner, "BULK_MIN", bulk_min)
        st = State()
        p = planner.plan(st, {s.key: s for s in svcs}, DEFAULT, codec=FakeCodec(), terminate=True)
        assert (len(p.svc_upd), len(p.backend_upd), len(p.maglev_upd)) == (70, 208, 1)
        st.commit(p)
        states.append({k: (lv.service, lv.count, lv.n_members, len(set(lv.ids))) for k, lv in st.services.items()})
    assert states[0] == states[1] and list(states[0]) == [s.key for s in svcs]


def test_rows_keep_given_buffers_and_list_their_keys() -> None:
    r = planner.Rows(4)
    keys, values = bytearray(b"aaaabbbb"), bytearray(b"12")
    r.extend(keys, values, 2)
    assert r.keys is keys and r.values is values  # kept, not copied
    r.add(b"cccc", b"3")
    assert r.key_list() == [b"aaaa", b"bbbb", b"cccc"] and r.key_list(2) == [b"cccc"] and len(r) == 3


# --- a property: any sequence of plans keeps the state consistent ---------------------

VIPS = [f"10.96.1.{i}" for i in range(1, 6)]

backend_st = st.builds(
    lambda i, w, state: Backend(f"10.244.1.{i}", 8080, weight=w, state=state),
    st.integers(1, 8),
    st.sampled_from([1, 1, 2, 0]),
    st.sampled_from(["active", "active", "terminating", "maintenance"]),
)
service_st = st.builds(
    lambda vip, bs, algo, proto, term: Service(
        vip, 80, proto, list({x._key: x for x in bs}.values()), algo, terminate_tcp=term
    ),
    st.sampled_from(VIPS),
    st.lists(backend_st, max_size=5),
    st.sampled_from(["random", "random", "maglev"]),
    st.just("tcp") | st.just("udp"),
    st.booleans(),
)
step_st = st.tuples(
    st.lists(service_st, max_size=5),  # wanted
    st.lists(st.sampled_from(VIPS), max_size=2),  # removed
    st.booleans(),  # exclusive
    st.sampled_from(["commit", "commit", "commit", "abort"]),
)


@settings(derandomize=True, database=None, max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(step_st, min_size=1, max_size=12), st.integers(1, 4))
def test_any_sequence_of_plans_keeps_the_state_consistent(
    steps: List[Tuple[List[Service], List[str], bool, str]], bulk_min: int
) -> None:
    old_bulk = planner.BULK_MIN
    planner.BULK_MIN = bulk_min
    try:
        _run_steps(steps)
    finally:
        planner.BULK_MIN = old_bulk


def _run_steps(steps: List[Tuple[List[Service], List[str], bool, str]]) -> None:
    spec = Limits(max_services=4, max_backends=12, max_maglev_services=2, maglev_size=7)
    state = State(id_limit=64)
    model: Dict[ServiceKey, Service] = {}
    for services, removed, exclusive, outcome in steps:
        want: Want = {s.key: s for s in services}
        for v in removed:
            want.setdefault((v, 80, "tcp"), None)
        end = {k: s for k, s in model.items() if not exclusive or k in want}
        for k, s in want.items():
            if s is None:
                end.pop(k, None)
            else:
                end[k] = s
        fits = (
            len(end) <= spec.max_services
            and sum(len(s.backends) for s in end.values()) <= spec.max_backends
            and sum(s.algorithm.value == "maglev" for s in end.values()) <= spec.max_maglev_services
        )
        before = {k: (lv.svc_id, lv.list_id, list(lv.ids)) for k, lv in state.services.items()}
        try:
            p = planner.plan(state, want, spec, codec=FakeCodec(), terminate=True, exclusive=exclusive)
        except CapacityError:
            assert not fits
            assert {k: (lv.svc_id, lv.list_id, list(lv.ids)) for k, lv in state.services.items()} == before
            continue
        assert fits
        # Every row is whole; each key of a map is written at most once.
        for r in (p.backend_upd, p.slot_upd, p.svc_upd, p.maglev_upd, p.backend_post):
            assert len(r.keys) == r.n * r.key_size and len(set(r.key_list())) == r.n
        upserts = sum(len(r) for r in (p.backend_upd, p.backend_post, p.slot_upd, p.maglev_upd, p.svc_upd))
        deletes = len(p.svc_del) + len(p.slot_del) + len(p.maglev_del) + len(p.backend_del)
        assert p.writes == upserts + deletes
        if outcome == "abort":
            state.abort(p)
            continue
        state.commit(p)
        # What the writer's clean-up does once the swap is done.
        for _, i in p.backend_del:
            state.backend_ids.give(i)
        for i in p.free_list_ids:
            state.list_ids.give(i)
        model = end
        assert {k: lv.service for k, lv in state.services.items()} == model
        assert state.n_backends == sum(len(lv.ids) for lv in state.services.values())
        assert state.n_maglev == sum(s.algorithm.value == "maglev" for s in model.values())
        for lv in state.services.values():
            assert len(lv.ids) == len(lv.service.backends) and lv.count == len(lv.service.selectable()[0])
        for ids in (
            [lv.svc_id for lv in state.services.values()],
            [lv.list_id for lv in state.services.values()],
            [i for lv in state.services.values() for i in lv.ids],
        ):
            assert len(ids) == len(set(ids)) and all(1 <= i <= 64 for i in ids)
        # The same want again writes nothing.
        again = planner.plan(state, want, spec, codec=FakeCodec(), terminate=True, exclusive=exclusive)
        assert again.writes == 0
        state.abort(again)


# --- no extension ---------------------------------------------------------------------


def test_the_planner_imports_no_extension() -> None:
    """A fresh interpreter imports the planner, its codec protocol, the limits
    and the fake codec without socklb._native or cffi.  Under ``./run unit``
    (SOCKLB_PURE=1) this very process must not have them either."""
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.dirname(os.path.dirname(os.path.abspath(socklb.__file__)))
    code = (
        "import sys, fakes, socklb.control.planner, socklb.control.sync, socklb.control.codec, socklb.datapath.limits\n"
        "bad = [m for m in sys.modules if m.startswith('socklb._native') or m.split('.')[0] == 'cffi']\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, src, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    if os.environ.get("SOCKLB_PURE") == "1":
        import importlib.util

        assert importlib.util.find_spec("cffi") is None  # the venv has no cffi
        assert "socklb._native._lib" not in sys.modules
        assert not [m for m in sys.modules if m.startswith("socklb._native")]
