"""A selectable slot carries its backend's address (issue 14, part 1): the
random pick and a weighted pick that keeps its slot's backend read the
address from the slot, without a backends lookup; an alias taken is looked
up.  The rows, the picks through real sockets, the selection counts and the
adoption of pins that hold a wrong slot address."""

from __future__ import annotations

import os
from collections import Counter
from typing import Dict

from helpers import TCP_PORT, VIP4, VIP6, World, dial, raw_map
from pinned import pinned_dir

from socklb import Backend, Balancer, Service
from socklb._native import abi, check, lib
from socklb._native.abi import SLOT_KEY, SLOT_VAL


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
