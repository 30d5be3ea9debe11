"""The ABI records and the planner, without root: no kernel is touched."""

from __future__ import annotations

import socket
import struct
from typing import Any, Dict, List, Optional, Tuple

import pytest
from cffi import FFI  # type: ignore[import-untyped]  # cffi ships no stubs
from helpers import VIP4

from socklb import Affinity, Algorithm, Backend, BackendState, CapacityError, Protocol, Service
from socklb._native import abi, features, ffi, lib
from socklb._native.abi import SLOT_KEY, SLOT_VAL
from socklb.control import encode as enc
from socklb.control import planner
from socklb.datapath.spec import HEADROOM, DatapathSpec
from socklb.model import ServiceKey

VIP = "10.96.0.10"


def svc(*backends: Backend, **kw: object) -> Service:
    return Service(VIP, 80, backends=backends, **kw)  # type: ignore[arg-type]


def b(i: int, **kw: object) -> Backend:
    return Backend(f"10.244.0.{i}", 8080, **kw)  # type: ignore[arg-type]


# --- records ------------------------------------------------------------------------


def test_records_pack_by_field_name_whatever_the_order() -> None:
    """Swapping two u32 fields in a header changes the packing with them."""
    a, z = FFI(), FFI()
    a.cdef("struct r { uint32_t first; uint32_t second; uint16_t port; uint8_t pad[2]; };")
    z.cdef("struct r { uint32_t second; uint32_t first; uint16_t port; uint8_t pad[2]; };")
    ra, rz = abi.Record("struct r", a), abi.Record("struct r", z)
    pa = ra.pack(first=1, second=2, port=3)
    pz = rz.pack(first=1, second=2, port=3)
    assert struct.unpack("=IIH2x", pa) == (1, 2, 3)
    assert struct.unpack("=IIH2x", pz) == (2, 1, 3)
    assert rz.unpack(pz).first == 1 and rz.unpack(pz).second == 2
    with pytest.raises(TypeError):
        ra.pack(1, 2, 3)  # never by position
    with pytest.raises(TypeError):
        ra.pack(first=1, second=2)  # every field is named


def test_every_record_matches_the_c_layout() -> None:
    for rec in (abi.SVC_KEY, abi.SVC_VAL, abi.SLOT_KEY, abi.SLOT_VAL, abi.BACKEND_VAL, abi.META, abi.ATTACH_INFO):
        assert rec.size == ffi.sizeof(rec.ctype)
        names = [n for n, _ in ffi.typeof(rec.ctype).fields if not n.startswith("pad")]
        assert list(rec.fields) == names
    raw = abi.SVC_VAL.pack(**{f: i + 1 for i, f in enumerate(abi.SVC_VAL.fields)})
    c = ffi.from_buffer("struct socklb_svc_val *", bytearray(raw))
    for i, f in enumerate(abi.SVC_VAL.fields):
        assert getattr(c, f) == i + 1, f


def test_codes_come_from_the_header() -> None:
    assert abi.PROTO.code[Protocol.UDP] == lib.SOCKLB_PROTO_UDP == 17
    assert abi.ALGO.member[lib.SOCKLB_ALGO_MAGLEV] is Algorithm.MAGLEV
    assert abi.STATE.code[BackendState.MAINTENANCE] == lib.SOCKLB_STATE_MAINTENANCE
    assert abi.DRAINING not in abi.STATE.member


def test_encode_decode_round_trip() -> None:
    s = Service(
        "fd00:96::a",
        53,
        "udp",
        [Backend("fd00:244::1", 53, weight=3), Backend("fd00:244::2", 53, state="quarantined")],
        algorithm="maglev",
        affinity=Affinity(60),
        terminate_tcp=True,
    )
    ids = [10 + i for i in range(len(s.backends))]  # the id of each backend, in order
    v = enc.encode(s, ids)
    assert v.n_usable == 1 and len(v.members) == 2 and v.algo == lib.SOCKLB_ALGO_MAGLEV
    key, value = enc.service_key(s), enc.service_value(s, 7, 9, v)
    backends = {bid: enc.backend_value(x, 7) for x, bid in zip(s.backends, ids)}
    assert enc.decode(key, value, v.members, backends) == s


def test_feature_table_is_the_one_source() -> None:
    names = [f.name for f in features.FEATURES]
    assert len(set(names)) == len(names)
    assert all(f.kernel and f.bit for f in features.FEATURES)
    assert features.SOCK_DESTROY.required is False
    err = features.SOCK_DESTROY.error("no")
    assert err.kernel == "6.5" and "6.5" in str(err)


# --- spec -----------------------------------------------------------------------------


def test_spec_headroom_written_once() -> None:
    s = DatapathSpec(max_services=10, max_backends=20, max_maglev_services=3, max_affinity=7, maglev_size=13)
    assert s.map_entries() == {
        "services": 10 * HEADROOM,
        "backends": 20 * HEADROOM,
        "selections": 20 * HEADROOM,
        "slots": 20 * HEADROOM,
        "maglev": 3 * HEADROOM,
        "affinity": 7,
    }
    assert DatapathSpec.from_meta(abi.META.unpack(s.meta())) == s


# --- planner ---------------------------------------------------------------------------


DEFAULT = DatapathSpec()


def plan(
    st: planner.State, *services: Service, remove: Tuple[ServiceKey, ...] = (), spec: DatapathSpec = DEFAULT
) -> planner.Plan:
    want: Dict[ServiceKey, Optional[Service]] = {x.key: x for x in services}
    want.update({k: None for k in remove})
    return planner.plan(st, want, spec, codec=enc.NATIVE, terminate=True)


def test_planner_new_service_writes_everything_once() -> None:
    st = planner.State()
    p = plan(st, svc(b(1), b(2), b(3)))
    assert (len(p.backend_upd), len(p.slot_upd), len(p.svc_upd)) == (3, 3, 1)
    assert p.writes == 7 and not p.svc_del and not p.backend_post
    assert st.services == {}  # nothing is committed by planning


def test_planner_unchanged_service_writes_nothing() -> None:
    st = planner.State()
    s = svc(b(1), b(2))
    st.commit(plan(st, s))
    assert plan(st, s).writes == 0


def test_planner_backend_change_makes_a_new_list_and_dooms_the_removed() -> None:
    st = planner.State()
    st.commit(plan(st, svc(b(1), b(2), protocol="udp")))
    old = st.services[(VIP, 80, "udp")]
    p = plan(st, svc(b(1), b(3), protocol="udp"))
    new = p.live[(VIP, 80, "udp")]
    assert new is not None and new.list_id != old.list_id
    assert len(p.backend_upd) == 1 and len(p.backend_del) == 1 and len(p.slot_del) == 2
    assert p.doomed == [old.backend_ids[b(2)._key]]
    assert new.backend_ids[b(1)._key] == old.backend_ids[b(1)._key]  # kept backends keep their id


def test_planner_state_change_of_kept_backend_is_written_after_the_swap() -> None:
    st = planner.State()
    st.commit(plan(st, svc(b(1), b(2))))
    p = plan(st, svc(b(1), b(2, state="maintenance")))
    assert len(p.backend_post) == 1 and not p.backend_upd


def test_planner_capacity_is_checked_before_anything_is_reserved() -> None:
    st = planner.State()
    spec = DatapathSpec(max_services=1, max_backends=3)
    st.commit(plan(st, svc(b(1)), spec=spec))
    with pytest.raises(CapacityError):
        plan(st, Service("10.96.0.11", 80, backends=[b(2)]), spec=spec)
    with pytest.raises(CapacityError):
        plan(st, svc(b(1), b(2), b(3), b(4)), spec=spec)
    assert st.svc_ids.take() == 2 and st.backend_ids.take() == 2  # no id was leaked


def test_planner_maglev_service_larger_than_its_table_is_refused() -> None:
    st = planner.State()
    with pytest.raises(CapacityError) as e:
        plan(st, svc(*[b(i) for i in range(1, 21)], algorithm="maglev"), spec=DatapathSpec(maglev_size=13))
    assert e.value.limit == 13 and e.value.needed == 20


def test_planner_abort_gives_ids_back() -> None:
    """Ids an aborted plan reserved are free again once the counter wraps."""
    st = planner.State(id_limit=8)
    p = plan(st, svc(b(1), b(2), b(3)))
    assert list(p.new_backend_ids) == [1, 2, 3]
    st.abort(p)
    p = plan(st, svc(b(1), b(2), b(3), b(4), b(5)))
    assert list(p.new_backend_ids) == [4, 5, 6, 7, 8]
    st.commit(p)
    p = plan(st, Service("10.96.0.11", 80, backends=[b(6), b(7), b(8)]))
    assert sorted(p.new_backend_ids) == [1, 2, 3]  # wrapped: the aborted ones, not 4..8


def test_ids_are_never_shared_across_a_wrap(seed: int) -> None:
    """Many changes with a tiny id space: every live id is unique, and no id
    still held by garbage or by the plan being made is handed out again."""
    import random

    rnd = random.Random(seed)
    st = planner.State(id_limit=40)
    spec = DatapathSpec(max_services=4, max_backends=16)
    vips = [f"10.96.0.{i}" for i in range(1, 5)]
    for step in range(1500):
        want: Dict[ServiceKey, Optional[Service]] = {}
        for v in rnd.sample(vips, rnd.randint(1, 4)):
            n = rnd.randint(0, 4)
            backends = {x._key: x for x in (b(rnd.randint(1, 9)) for _ in range(n))}
            want[(v, 80, "tcp")] = Service(v, 80, backends=backends.values())
        for k in list(st.services):
            if k not in want and rnd.random() < 0.5:
                want[k] = None
        p = planner.plan(st, want, spec, codec=enc.NATIVE, terminate=False)
        if rnd.random() < 0.1:
            st.abort(p)
            continue
        st.commit(p)
        # What the writer's clean-up would leave pending for a while.
        if rnd.random() < 0.3:
            st.garbage.backends += p.backend_del
            st.garbage.list_ids += p.free_list_ids
        else:
            for _, i in p.backend_del:
                st.backend_ids.give(i)
            for i in p.free_list_ids:
                st.list_ids.give(i)
        if rnd.random() < 0.5:
            for _, i in st.garbage.backends:
                st.backend_ids.give(i)
            for i in st.garbage.list_ids:
                st.list_ids.give(i)
            st.garbage.backends, st.garbage.list_ids = [], []
        live_b = [i for x in st.services.values() for i in x.backend_ids.values()]
        held_b = live_b + [i for _, i in st.garbage.backends]
        assert len(held_b) == len(set(held_b)), (step, held_b)
        live_l = [x.list_id for x in st.services.values()] + st.garbage.list_ids
        assert len(live_l) == len(set(live_l)), (step, live_l)
        svc_ids = [x.svc_id for x in st.services.values()]
        assert len(svc_ids) == len(set(svc_ids))
    assert st.backend_ids._used is not None  # the counter did wrap


def test_planner_remove() -> None:
    st = planner.State()
    s = svc(b(1), b(2), affinity=Affinity())
    st.commit(plan(st, s))
    p = plan(st, remove=(s.key,))
    assert p.svc_del and len(p.backend_del) == 2 and p.affinity_purge and p.live == {s.key: None}
    st.commit(p)
    assert st.services == {} and st.n_backends == 0


def test_readme_lists_the_feature_table() -> None:
    import pathlib

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    for f in features.FEATURES:
        assert f"| `{f.name}` | {f.description} | {f.kernel} |" in readme, f.name


def test_a_wrap_skips_ids_held_by_garbage() -> None:
    st = planner.State(id_limit=6)
    a = svc(b(1), b(2))
    st.commit(plan(st, a))  # backend ids 1, 2
    p = plan(st, a.with_backends([b(3), b(4)]))  # 3, 4; 1 and 2 are to be deleted
    st.commit(p)
    st.garbage.backends += p.backend_del  # the deletion failed: 1 and 2 stay held
    st.commit(plan(st, Service("10.96.0.11", 80, backends=[b(5), b(6)])))  # 5, 6
    (gone,) = [(k, i) for k, i in st.garbage.backends if i == 2]
    st.garbage.backends.remove(gone)  # 2 was deleted at last; 1 is still held
    st.backend_ids.give(2)
    p = plan(st, Service("10.96.0.12", 80, backends=[b(7)]))
    assert list(p.new_backend_ids) == [2]


def test_a_wrap_skips_ids_the_plan_itself_took() -> None:
    st = planner.State(id_limit=4)
    with pytest.raises(CapacityError):  # 1..3, then 4, then nothing is left
        plan(st, svc(b(1), b(2), b(3)), Service("10.96.0.11", 80, backends=[b(4), b(5)]))


def slot_values(version: enc.Version, list_id: int = 7) -> List[Any]:
    keys, vals = enc.slot_rows(list_id, version)
    n = len(version.members)
    assert len(keys) == n * SLOT_KEY.size and len(vals) == n * SLOT_VAL.size
    return [SLOT_VAL.unpack(vals[i * SLOT_VAL.size : (i + 1) * SLOT_VAL.size]) for i in range(n)]


def test_selectable_slots_hold_their_backends_address_the_others_none() -> None:
    bs = [
        Backend("10.244.0.1", 8080, weight=1),
        Backend("10.244.0.2", 8443, weight=3),
        Backend("10.244.0.3", 80, weight=0),  # drained: not selectable
        Backend("10.244.0.4", 81, state="quarantined"),
    ]
    svc = Service(VIP4, 80, "tcp", bs)
    version = enc.encode(svc, [11, 12, 13, 14])
    assert version.algo == lib.SOCKLB_ALGO_WEIGHTED and version.n_usable == 2
    got = slot_values(version)
    for i, (s, m) in enumerate(zip(got, version.members)):
        # The control plane's fields are the Member's, read back the same.
        assert enc.member_of(SLOT_VAL.pack(**s._asdict())) == m
        if i < version.n_usable:
            b = version.usable[i]
            assert (s.addr, socket.ntohs(s.port)) == (b._a16, b.port)
        else:
            assert (s.addr, s.port) == (bytes(16), 0)
    # The alias of the light slot is the heavy one: another backend, whose
    # address the datapath looks up when it takes the alias.
    assert got[0].alias_id == 12 and got[0].keep < enc.KEEP_ALL


def test_packed_slots_carry_the_address_too() -> None:
    """The C packer (rows.c) writes each slot's address as encode does."""
    svcs = [
        Service(f"10.96.7.{i}", 80, "tcp", [Backend(f"10.244.7.{j}", 9000 + j) for j in range(1, i + 1)])
        for i in (1, 3)
    ]
    rows = enc.UniformRows(svcs)
    ids = range(100, 100 + rows.n_backends)
    out = rows.pack(range(1, 3), range(50, 52), ids)
    vals = bytes(out[5])
    at = 0
    for k, svc in enumerate(svcs):
        n = len(svc.backends)
        want = enc.slot_rows(50 + k, enc.encode(svc, ids[at : at + n]))[1]
        assert vals[at * SLOT_VAL.size : (at + n) * SLOT_VAL.size] == want
        at += n
    assert SLOT_VAL.unpack(vals[-SLOT_VAL.size :]).addr == svcs[1].backends[-1]._a16
