"""The raw maps a model of services should give (read with tests/pinned.py's
read_pinned): shared by tests/datapath/test_against_a_model.py and
tests/system/test_rollout_and_crash_recovery.py."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Dict, List, Tuple

from socklb import Algorithm, Backend, BackendState, Service
from socklb._native import lib
from socklb._native.abi import BACKEND_VAL, SLOT_KEY, SLOT_VAL, SVC_KEY, SVC_VAL, U32
from socklb.control.encode import maglev_table

ServiceKey = Tuple[str, int, str]

STATE_CODE = {
    BackendState.ACTIVE: lib.SOCKLB_STATE_ACTIVE,
    BackendState.TERMINATING: lib.SOCKLB_STATE_TERMINATING,
    BackendState.QUARANTINED: lib.SOCKLB_STATE_QUARANTINED,
    BackendState.MAINTENANCE: lib.SOCKLB_STATE_MAINTENANCE,
}
PROTO_NAME = {lib.SOCKLB_PROTO_TCP: "tcp", lib.SOCKLB_PROTO_UDP: "udp"}


def usable(svc: Service) -> List[Backend]:
    """What a service chooses from: active backends with a weight, else
    terminating ones with a weight (Kubernetes' terminating fallback)."""
    active = [b for b in svc.backends if b.state is BackendState.ACTIVE and b.weight > 0]
    return active or [b for b in svc.backends if b.state is BackendState.TERMINATING and b.weight > 0]


def _ip(raw16: bytes) -> Any:
    ip = ipaddress.IPv6Address(raw16)
    return ip.ipv4_mapped or ip


ALGO_CODE = {
    Algorithm.RANDOM: lib.SOCKLB_ALGO_RANDOM,
    Algorithm.WEIGHTED: lib.SOCKLB_ALGO_WEIGHTED,
    Algorithm.MAGLEV: lib.SOCKLB_ALGO_MAGLEV,
}


def check_tables(tables: Dict[str, Dict[bytes, bytes]], model: Dict[ServiceKey, Service], maglev_size: int) -> None:
    """The raw maps hold exactly ``model``: one service entry per service with
    its options, its backends, a list of exactly its members (usable ones
    first, with their weights; then the rest), each with its weight and state,
    the Maglev table built from the usable ones, and nothing that no service
    refers to."""
    services, slots, backends = tables["services"], tables["slots"], tables["backends"]
    maglev = tables.get("maglev")
    assert len(services) == len(model), (len(services), sorted(model))
    owned: Dict[int, Dict[Tuple[Any, int], Tuple[int, Any]]] = {}
    for k, v in backends.items():
        bid = U32.unpack(k)[0]
        f = BACKEND_VAL.unpack(v)
        owned.setdefault(f.svc_id, {})[(_ip(f.addr), socket.ntohs(f.port))] = (bid, f)
    lists = set()
    for k, v in services.items():
        sk = SVC_KEY.unpack(k)
        key = (str(_ip(sk.addr)), socket.ntohs(sk.port), PROTO_NAME[sk.proto])
        svc = model.get(key)
        assert svc is not None, f"{key} is in the maps but not in the model"
        sv = SVC_VAL.unpack(v)
        svc_id, list_id, count, total, members = sv.svc_id, sv.list_id, sv.count, sv.total_weight, sv.members
        timeout, algo, flags, req_algo, opts = sv.affinity_timeout, sv.algo, sv.flags, sv.requested_algo, sv.opts
        assert list_id not in lists, f"list {list_id} is shared"
        lists.add(list_id)
        assert timeout == (svc.affinity.timeout if svc.affinity else 0), svc
        assert req_algo == ALGO_CODE[svc.algorithm], svc
        assert bool(opts & lib.SOCKLB_SVC_O_TERMINATE_TCP) == svc.terminate_tcp, svc
        assert bool(flags & lib.SOCKLB_SVC_F_AFFINITY) == (svc.affinity is not None), svc
        mine = owned.pop(svc_id, {})
        assert set(mine) == {(b.ip, b.port) for b in svc.backends}, (key, mine, svc.backends)
        assert members == len(svc.backends), (key, members)
        rows_all = [SLOT_VAL.unpack(slots[SLOT_KEY.pack(list_id=list_id, index=i)]) for i in range(members)]
        by_id = {r.backend_id: r for r in rows_all}
        for b in svc.backends:
            bid, f = mine[(b.ip, b.port)]
            assert f.state == (STATE_CODE[b.state] if b.weight else lib.SOCKLB_STATE_DRAINING), (b, f)
            assert by_id[bid].weight == b.weight and by_id[bid].user_state == STATE_CODE[b.state], (b, by_id[bid])
        use = usable(svc)
        ids = [mine[(b.ip, b.port)][0] for b in use]
        fallback = bool(use) and use[0].state is BackendState.TERMINATING
        assert bool(flags & lib.SOCKLB_SVC_F_FALLBACK) == fallback, svc
        assert count == len(use), (key, count, use)
        if svc.algorithm is Algorithm.MAGLEV:
            assert (algo, total) == (lib.SOCKLB_ALGO_MAGLEV, sum(b.weight for b in use)), svc
            if maglev is not None:
                table = maglev.get(U32.pack(list_id))
                if use:
                    assert table is not None and len(table) == 4 * maglev_size, key
                    # The table the service's usable backends and weights make.
                    want = [ids[i] for i in maglev_table(use, maglev_size)]
                    assert [i for (i,) in U32.iter_unpack(table)] == want, f"{key}: the maglev table is not {svc}'s"
                else:
                    assert table is None
        else:
            # Every algorithm but maglev picks by weight from the slots' alias table.
            weights = [b.weight for b in use]
            uniform = len(set(weights)) <= 1
            assert algo == (lib.SOCKLB_ALGO_RANDOM if uniform else lib.SOCKLB_ALGO_WEIGHTED), svc
            assert total == sum(weights), svc
            rows = [(r.backend_id, r.alias_id, r.keep) for r in rows_all[:count]]
            assert sorted(bid for bid, _, _ in rows) == sorted(ids), f"{key}: slots {rows} are not {svc}'s"
            if uniform:
                assert all(a == bid for bid, a, _ in rows), f"{key}: a uniform list has no aliases: {rows}"
            else:
                # What the datapath's draw gives each backend: its weight's share.
                share: Dict[int, float] = {}
                for bid, alias, keep in rows:
                    p = 1.0 if alias == bid else keep / 2**32
                    share[bid] = share.get(bid, 0.0) + p / count
                    share[alias] = share.get(alias, 0.0) + (1 - p) / count
                for bid, w in zip(ids, weights):
                    assert abs(share.get(bid, 0.0) - w / total) < 1e-6, f"{key}: slots {rows} are not {svc}'s"
        assert sorted(r.backend_id for r in rows_all[:count]) == sorted(ids), f"{key}: usable members first"
    assert owned == {}, f"backends of no service: {owned}"
    assert len(backends) == sum(len(s.backends) for s in model.values())
    assert len(slots) == sum(len(s.backends) for s in model.values())
    assert all(SLOT_KEY.unpack(k).list_id in lists for k in slots), "slots of no service"
    if maglev is not None:
        assert all(U32.unpack(k)[0] in lists for k in maglev), "maglev tables of no service"
        assert len(maglev) == sum(1 for s in model.values() if s.algorithm is Algorithm.MAGLEV and usable(s))
