"""The bulk path of a large sync (issue 14, part 3): new services packed in C
(``enc.UniformRows``, ``csrc/rows.c``) give byte for byte the rows the
per-service path (``enc.encode``) gives, services the packer does not take go
the per-service way, and the parallel map writes keep the writer's rollback."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import require_root

from socklb import Backend, Balancer, KernelError, Service
from socklb._native import abi
from socklb.control import writer
from socklb.datapath.live import Map


def test_parallel_writes_sync_and_roll_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync whose new rows are written from two threads; then one whose
    slots cannot be written (a bad descriptor): the error is raised, nothing
    changed, nothing left behind."""
    require_root()
    monkeypatch.setattr(writer, "PARALLEL_MIN_ROWS", 1)
    monkeypatch.setattr(writer, "write_threads", lambda: 2)
    svcs = [
        Service(f"10.96.{i >> 8}.{i & 255}", 80, backends=[Backend(f"10.244.{j}.{i & 255}", 80) for j in range(4)])
        for i in range(1, 1500)
    ]
    with Balancer(max_services=4096, max_backends=16384) as lb:
        r = lb.sync(svcs[:1000])
        assert len(r.added) == 1000 and r.map_writes == 1000 * 9
        assert sorted(lb.kernel_services(), key=str) == sorted(svcs[:1000], key=str)
        before = lb.dump()
        tables = lb._tables
        lb._tables = dataclasses.replace(tables, slots=Map(None, "slots", -1, tables.slots.key_size, 20))
        with pytest.raises(KernelError, match="update of map slots"):
            lb.sync(svcs)
        lb._tables = tables
        assert lb.services() == svcs[:1000]
        lb.reconcile()
        assert lb.dump() == before  # the new backends written by the other thread are gone
        assert lb.sync(svcs).added == tuple(s.key for s in svcs[1000:])
        assert sorted(lb.kernel_services(), key=str) == sorted(svcs, key=str)


def test_wildcard_port_bits_follow_each_write() -> None:
    """The wild_ports bit of a port is set while one of its wildcard services
    (either family, either protocol) is programmed; each write updates only
    the ports it touched, and agrees with a recount of every service."""
    require_root()

    def bit(lb: Balancer, port: int) -> bool:
        raw = lb._node._wild_ports.lookup(abi.U32.pack(port >> 6))
        return bool(raw is not None and int.from_bytes(raw, "little") >> (port & 63) & 1)

    be4, be6 = [Backend("10.244.9.1", 80)], [Backend("fd00:244::9", 80)]
    tcp, udp = Service.node_port(30080, backends=be4), Service.node_port(30080, "udp", backends=be4)
    six = Service.node_port(30081, backends=be6, family=6)
    with Balancer() as lb:
        lb.upsert(tcp)
        lb.upsert(udp)
        lb.sync([tcp, udp, six, Service("10.96.9.1", 30082, backends=be4)])
        assert (bit(lb, 30080), bit(lb, 30081), bit(lb, 30082)) == (True, True, False)
        lb.remove(tcp.key)
        assert bit(lb, 30080)  # the UDP one is still there
        lb.remove(udp.key)
        assert not bit(lb, 30080) and bit(lb, 30081)
        words = dict(lb._node._words)
        lb._node.sync_wild_ports(lb._state.services)  # a recount of every service changes nothing
        assert lb._node._words == words
        lb.sync([])
        assert not bit(lb, 30081) and not lb._node._words
