"""A selectable slot carries its backend's address (issue 14, part 1): the
random pick and a weighted pick that keeps its slot's backend read the
address from the slot, without a backends lookup; an alias taken is looked
up.  The rows, the picks through real sockets, the selection counts and the
adoption of pins that hold a wrong slot address."""

from __future__ import annotations

import os
import socket
from collections import Counter
from typing import Any, Dict, List

from helpers import TCP_PORT, VIP4, VIP6, World, dial, raw_map
from test_pins import pinned_dir

from socklb import Backend, Balancer, Service
from socklb._native import abi, check, lib
from socklb._native.abi import SLOT_KEY, SLOT_VAL
from socklb.control import encode as enc


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


def test_weighted_picks_land_on_the_chosen_address_and_are_counted(world: World, balancer: Balancer) -> None:
    """1:9 over two backends: most picks of the light slot take its alias (a
    lookup), the heavy slot's own backend comes from the slot; every connect
    reaches the backend it was counted for."""
    ip = {k: p.ipv4 for k, p in world.backends.items()}
    svc = Service(VIP4, 80, "tcp", [Backend(ip["b1"], TCP_PORT, weight=1), Backend(ip["b2"], TCP_PORT, weight=9)])
    balancer.upsert(svc)
    balancer.attach(world.client.cgroup)
    n = 400
    res = dial(world.client, "tcp", VIP4, 80, n)
    assert res["errors"] == []
    served = Counter(res["served"])
    assert sum(served.values()) == n and served["b2"] > served["b1"] > 0, served
    sel = balancer.selections()[svc.key]
    assert sel == {(ip["b1"], TCP_PORT): served["b1"], (ip["b2"], TCP_PORT): served["b2"]}


def test_a_uniform_list_counts_every_backend(world: World, balancer: Balancer) -> None:
    bs = [Backend(p.ipv6, TCP_PORT) for p in world.pods("b1", "b2", "b3")]
    svc = Service(VIP6, 80, "tcp", bs)
    balancer.upsert(svc)
    balancer.attach(world.client.cgroup)
    res = dial(world.client, "tcp", VIP6, 80, 300)
    assert res["errors"] == []
    served = Counter(res["served"])
    by_addr = {p.ipv6: name for name, p in world.backends.items()}
    sel = balancer.selections()[svc.key]
    assert {by_addr[a]: c for (a, _), c in sel.items()} == dict(served) and len(served) == 3


def test_a_pinned_slot_with_a_wrong_address_is_rewritten_on_adoption(world: World) -> None:
    ip = {k: p.ipv4 for k, p in world.backends.items()}
    svc = Service(VIP4, 80, "tcp", [Backend(ip["b1"], TCP_PORT), Backend(ip["b2"], TCP_PORT)])
    with pinned_dir() as pd:
        with Balancer(pin_dir=pd) as lb:
            lb.upsert(svc)
            slots = {k: v for k, v in lb.dump()["slots"].items()}
        # What a writer that forgot the address, or a bad actor, leaves: slot
        # 0 points at b3's address under b1's id.
        fd = check(lib.socklb_obj_get(os.path.join(pd, "maps", "slots").encode(), 0), "open slots")
        try:
            m = raw_map(fd, "slots", SLOT_KEY.size, SLOT_VAL.size)
            key = next(k for k, v in slots.items() if SLOT_KEY.unpack(k).index == 0)
            bad = SLOT_VAL.unpack(slots[key])._replace(addr=Backend(ip["b3"], 1)._a16)
            m.update(key, SLOT_VAL.pack(**bad._asdict()), 1)
        finally:
            os.close(fd)
        with Balancer(pin_dir=pd) as lb:
            fixed: Dict[bytes, bytes] = lb.dump()["slots"]
            assert all(abi.addr_text(SLOT_VAL.unpack(v).addr) in (ip["b1"], ip["b2"]) for v in fixed.values())
            lb.attach(world.client.cgroup)
            res = dial(world.client, "tcp", VIP4, 80, 60)
            assert res["errors"] == [] and set(res["served"]) == {"b1", "b2"}, res
