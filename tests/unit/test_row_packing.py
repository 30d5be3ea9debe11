"""The rows a large sync packs in C (enc.UniformRows, csrc/rows.c) are byte for
byte those of the per-service path (enc.encode), services the packer does not
take go the per-service way, and bulk ids survive a counter wrap.  No root: no
kernel is touched."""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest

from socklb import Affinity, Backend, Service
from socklb._native import abi
from socklb.control import encode as enc
from socklb.control import planner
from socklb.datapath.spec import DatapathSpec

SPEC = DatapathSpec(max_services=4096, max_backends=65536)


def uniform_services() -> List[Service]:
    """Every kind of service the packer takes: both families, both protocols,
    affinity, TCP termination, wildcard frontends, "weighted" with equal
    weights, a common weight other than 1, no backend at all."""
    out = []
    for i in range(40):
        bs = [Backend(f"10.244.{i}.{j + 1}", 8080 + j, weight=1 + (i % 3)) for j in range(i % 5)]
        kw: Dict[str, object] = {}
        if i % 4 == 1:
            kw["affinity"] = Affinity(30 + i)
        if i % 6 == 2:
            kw["terminate_tcp"] = True
        if i % 7 == 3:
            kw["algorithm"] = "weighted"
        out.append(Service(f"10.96.1.{i + 1}", 80 + i % 3, "udp" if i % 2 else "tcp", bs, **kw))  # type: ignore[arg-type]
    out.append(Service("fd00:96::1", 443, backends=[Backend("fd00:244::1", 8443), Backend("fd00:244::2", 8443)]))
    out.append(Service.node_port(30080, backends=[Backend("10.244.50.1", 80)]))
    out.append(Service.host_port(8443, backends=[Backend("10.244.50.2", 443)], address="192.0.2.10"))
    return out


def other_services() -> List[Service]:
    """Services the packer leaves to enc.encode: unequal weights, a drained,
    terminating or quarantined backend, Maglev."""
    b = [Backend(f"10.245.0.{j}", 80) for j in range(1, 5)]
    return [
        Service("10.97.0.1", 80, backends=[b[0], Backend("10.245.0.9", 80, weight=2)]),
        Service("10.97.0.2", 80, backends=[b[0], Backend("10.245.0.9", 80, weight=0)]),
        Service("10.97.0.3", 80, backends=[Backend("10.245.0.9", 80, state="terminating")]),
        Service("10.97.0.4", 80, backends=[b[1], Backend("10.245.0.9", 80, state="quarantined")]),
        Service("10.97.0.5", 80, backends=b, algorithm="maglev"),
    ]


def plan(services: List[Service], bulk: bool, monkeypatch: pytest.MonkeyPatch) -> planner.Plan:
    monkeypatch.setattr(planner, "BULK_MIN", 1 if bulk else 1 << 30)
    return planner.plan(planner.State(), {s.key: s for s in services}, SPEC, codec=enc.NATIVE, terminate=True)


def rows(r: planner.Rows) -> List[Tuple[bytes, bytes]]:
    ks, vs = len(r.keys) // r.n if r.n else 0, len(r.values) // r.n if r.n else 0
    return [(bytes(r.keys[i * ks : (i + 1) * ks]), bytes(r.values[i * vs : (i + 1) * vs])) for i in range(r.n)]


def decoded(p: planner.Plan) -> List[Service]:
    """The services a plan's rows describe, read back with enc.decode."""
    backends = dict((abi.U32.unpack(k)[0], v) for k, v in rows(p.backend_upd))
    slots: Dict[int, Dict[int, enc.Member]] = {}
    for k, v in rows(p.slot_upd):
        key = abi.SLOT_KEY.unpack(k)
        slots.setdefault(key.list_id, {})[key.index] = enc.member_of(v)
    out = []
    for k, v in rows(p.svc_upd):
        val = abi.SVC_VAL.unpack(v)
        members = [slots.get(val.list_id, {})[i] for i in range(val.members)]
        out.append(enc.decode(k, v, members, backends))
    return out


def test_packed_rows_are_those_of_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    svcs = uniform_services()
    assert enc.UniformRows(svcs).n == len(svcs)  # every one is taken
    bulk, each = plan(svcs, True, monkeypatch), plan(svcs, False, monkeypatch)
    for name in ("backend_upd", "slot_upd", "svc_upd", "maglev_upd", "backend_post"):
        assert rows(getattr(bulk, name)) == rows(getattr(each, name)), name
    assert bulk.added == each.added == [s.key for s in svcs]
    assert list(bulk.live) == list(each.live)
    for k, a in bulk.live.items():
        e = each.live[k]
        assert a is not None and e is not None
        assert (a.service, a.svc_id, a.list_id, list(a.ids), a.count, a.n_members) == (
            e.service,
            e.svc_id,
            e.list_id,
            list(e.ids),
            e.count,
            e.n_members,
        )
        assert a.value == e.value  # the service value computed again from what is kept
    assert sorted(bulk.new_backend_ids) == sorted(each.new_backend_ids)


def test_a_mixed_list_takes_both_paths_and_keeps_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    uni, other = uniform_services(), other_services()
    mixed = [s for pair in zip(uni, other) for s in pair] + uni[len(other) :]
    assert list(enc.UniformRows(mixed).mask) == [int(s in uni) for s in mixed]
    bulk, each = plan(mixed, True, monkeypatch), plan(mixed, False, monkeypatch)
    assert sorted(decoded(bulk), key=str) == sorted(decoded(each), key=str) == sorted(mixed, key=str)
    assert bulk.writes == each.writes
    # What goes live is in the order given, whichever path planned it.
    assert list(bulk.live) == [s.key for s in mixed] == bulk.added
    # Every id is taken once.
    p = bulk
    svc_ids = [lv.svc_id for lv in p.live.values() if lv is not None]
    list_ids = [lv.list_id for lv in p.live.values() if lv is not None]
    bids = [i for lv in p.live.values() if lv is not None for i in lv.ids]
    assert len(set(svc_ids)) == len(svc_ids) == len(mixed)
    assert len(set(list_ids)) == len(list_ids)
    assert len(set(bids)) == len(bids) == sum(len(s.backends) for s in mixed)


def test_bulk_ids_after_the_counter_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ids recorded (the counter wrapped), the packer is given id arrays, not a first id."""
    monkeypatch.setattr(planner, "BULK_MIN", 1)
    st = planner.State(id_limit=200)
    first = [Service(f"10.96.2.{i}", 80, backends=[Backend(f"10.244.2.{i}", 80)]) for i in range(1, 151)]
    st.commit(planner.plan(st, {s.key: s for s in first}, SPEC, codec=enc.NATIVE, terminate=False))
    st.commit(planner.plan(st, {s.key: None for s in first[:100]}, SPEC, codec=enc.NATIVE, terminate=False))
    # 99 more than the 50 left need ids past the limit: the counter wraps.
    more = [Service(f"10.96.3.{i}", 80, backends=[Backend(f"10.244.3.{i}", 80)]) for i in range(1, 100)]
    p = planner.plan(st, {s.key: s for s in more}, SPEC, codec=enc.NATIVE, terminate=False)
    assert not isinstance(p.live[more[-1].key].ids, range)  # type: ignore[union-attr]
    held = {i for lv in st.services.values() for i in lv.ids}
    for ids in (
        [i for lv in p.live.values() if lv is not None for i in lv.ids],
        [lv.svc_id for lv in p.live.values() if lv is not None],
        [lv.list_id for lv in p.live.values() if lv is not None],
    ):
        assert len(set(ids)) == len(ids) == 99 and all(0 < i <= 200 for i in ids)
    assert not held & {i for lv in p.live.values() if lv is not None for i in lv.ids}
    assert sorted(decoded(p), key=str) == sorted(more, key=str)
