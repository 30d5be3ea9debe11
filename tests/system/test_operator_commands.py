"""The operator's commands (socklb status, services, stats, apply, doctor)
against a pinned balancer owned by ANOTHER process: outputs parsed (-o json)
and compared with what was programmed; the read-only commands hold no lock
and write nothing (the pin tree and every map byte for byte unchanged); bad
input gives one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any, Dict, List, Tuple

import pytest
from helpers import (
    TCP_PORT,
    UDP_PORT,
    VIP4,
    VIP6,
    World,
    dial,
    one_line_error,
    program,
    raw_map,
    refused,
    require_root,
    socklb_cli,
)
from pinned import holder, obj_get, pinned_dir, tree

from socklb import Affinity, Backend, BackendState, Service
from socklb.datapath import pins as pins_mod
from socklb.datapath.live import PROGRAMS
from socklb.ops import servicefile

socklb = socklb_cli


def ok_json(*args: str) -> Any:
    r = socklb(*args, "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def snapshot(pd: str) -> Tuple[Dict[str, int], Dict[str, Dict[bytes, bytes]], List[str]]:
    """The pin tree (paths and modes), every walkable map's raw contents and
    the locks on the directory."""
    maps = {}
    for name in sorted(os.listdir(os.path.join(pd, "maps"))):
        if name.startswith("sock_") or name == "trace_events":
            continue  # socket-local storage, a ring buffer: no keys to walk
        fd = obj_get(os.path.join(pd, "maps", name))
        try:
            info = _info(fd)
            m = raw_map(fd, name, info[0], info[1] * (_ncpu() if info[2] else 1))
            maps[name] = {k: v for k in m.keys(1 << 20) if (v := m.lookup(k)) is not None}
        finally:
            os.close(fd)
    st = os.stat(pd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks", encoding="ascii") as f:
        locks = sorted(line.split(None, 1)[1] for line in f if dev in line.split())
    return tree(pd), maps, locks


def _info(fd: int) -> Tuple[int, int, bool]:
    from socklb._native import ffi, lib

    t, k, v, m = (ffi.new("uint32_t *") for _ in range(4))
    assert lib.socklb_map_info(fd, t, k, v, m) == 0
    return int(k[0]), int(v[0]), int(t[0]) in (5, 6, 10)  # per-CPU types


def _ncpu() -> int:
    from socklb._native import possible_cpus

    return possible_cpus()


def services_json(svcs: List[Service]) -> List[Dict[str, Any]]:
    return [
        {
            "address": s.address,
            "port": s.port,
            "protocol": s.protocol.value,
            "algorithm": s.algorithm.value,
            "affinity": {"timeout": s.affinity.timeout} if s.affinity else None,
            "terminate_tcp": s.terminate_tcp,
            "frontend": s.frontend.value,
            "backends": sorted((b.address, b.port, b.weight, b.state.value) for b in s.backends),
        }
        for s in svcs
    ]


def strip_ids(got: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for s in got:
        s = dict(s)
        s["backends"] = sorted((b["address"], b["port"], b["weight"], b["state"]) for b in s["backends"])
        out.append(s)
    return out


def programmed(world: World) -> List[Service]:
    b = world.pods("b1", "b2", "b3")
    return [
        Service(VIP4, 80, "tcp", [Backend(p.ipv4, TCP_PORT) for p in b]),
        Service(
            "10.96.0.11",
            80,
            "tcp",
            [Backend(b[0].ipv4, TCP_PORT, weight=3), Backend(b[1].ipv4, TCP_PORT, state=BackendState.TERMINATING)],
            algorithm="weighted",
        ),
        Service(VIP6, 53, "udp", [Backend(p.ipv6, UDP_PORT) for p in b[:2]], affinity=Affinity(600)),
        Service("10.96.0.12", 81, "tcp", []),
    ]


def key_of(d: Dict[str, Any]) -> Tuple[str, int, str]:
    return (d["address"], d["port"], d["protocol"])


@pytest.mark.slow
def test_read_only_commands_against_another_owner(world: World) -> None:
    svcs = programmed(world)
    with pinned_dir() as pd, holder(pd, svcs, cgroup=world.client.cgroup) as owner:
        got = dial(world.client, "tcp", VIP4, 80, 30)
        assert not got["errors"], got
        refused_ = dial(world.client, "tcp", "10.96.0.12", 81, 2)
        assert len(refused_["errors"]) == 2 and all(refused() in e for e in refused_["errors"]), refused_

        before = snapshot(pd)
        status = ok_json("status", "--pin-dir", pd)
        services = ok_json("services", "--pin-dir", pd)
        one = ok_json("services", "--pin-dir", pd, f"{VIP4}:80")
        v6 = ok_json("services", "--pin-dir", pd, f"[{VIP6}]:53")
        stats = ok_json("stats", "--pin-dir", pd)
        tables = [socklb(cmd, "--pin-dir", pd) for cmd in ("status", "services", "stats")]
        yaml_out = socklb("services", "--pin-dir", pd, "-o", "yaml")
        after = snapshot(pd)
        assert after == before, "a read-only command changed the pins, a map or the locks"
        assert pins_mod.holder_pid(pd) == owner.pid

        # selection counts: every connect to the VIP, at the backend that served it
        by_ip = {p.ipv4: name for name, p in world.backends.items()}
        (vs,) = [s for s in services if key_of(s) == (VIP4, 80, "tcp")]
        assert {by_ip[b["address"]]: b["selections"] for b in vs["backends"] if b["selections"]} == dict(
            Counter(got["served"])
        )
        assert all(b["selections"] == 0 for s in services if key_of(s) != (VIP4, 80, "tcp") for b in s["backends"])

        # services: exactly what the owner programmed
        want = sorted(services_json(svcs), key=key_of)
        assert sorted(strip_ids(services), key=key_of) == want
        assert [key_of(s) for s in one] == [(VIP4, 80, "tcp")]
        assert [key_of(s) for s in v6] == [(VIP6, 53, "udp")]
        ids = [b["id"] for s in services for b in s["backends"]]
        assert len(set(ids)) == len(ids) and all(i > 0 for i in ids)

        # status: owner, layout, limits, maps, the attachment with every program
        assert status["owner_pid"] == owner.pid
        from socklb._native import lib

        assert status["layout_version"] == lib.SOCKLB_LAYOUT_VERSION
        assert status["limits"]["max_services"] == 65536
        maps = {m["name"]: m for m in status["maps"]}
        assert maps["services"]["entries"] == len(svcs)
        assert maps["backends"]["entries"] == sum(len(s.backends) for s in svcs)
        assert maps["services"]["max_entries"] == 2 * 65536
        (att,) = status["attachments"]
        assert att["cgroup"] == os.path.realpath(world.client.cgroup)
        assert att["cgroup_id"] == os.stat(world.client.cgroup).st_ino
        assert set(att["programs"]) == set(PROGRAMS)
        assert all(pid > 0 for pid in att["programs"].values())

        # stats: the connects made above
        c = stats["counters"]
        assert c["connect"] >= 30 and c["no_backend"] >= 2 and c["connect6"] == 0, c

        for r in tables:
            assert r.returncode == 0 and r.stdout.strip(), r.stderr
        assert "FRONTEND" in tables[1].stdout and f"{VIP4}:80/TCP" in tables[1].stdout
        assert yaml_out.returncode == 0 and f"address: {VIP4}" in yaml_out.stdout, yaml_out.stderr


def test_selection_counters(world: World) -> None:
    """Balancer.selections(): one per connect at the chosen backend, affinity
    hits included; a removed backend's counter goes with it."""
    from socklb import Balancer

    b1, b2, b3 = world.pods("b1", "b2", "b3")
    svc = Service(VIP4, 80, "tcp", [Backend(p.ipv4, TCP_PORT) for p in (b1, b2, b3)])
    aff = Service(VIP6, 80, "tcp", [Backend(p.ipv6, TCP_PORT) for p in (b1, b2)], affinity=Affinity(600))
    with Balancer(max_services=16, max_backends=64) as lb:
        lb.upsert(svc)
        lb.upsert(aff)
        with lb.attach(world.client.cgroup):
            got = dial(world.client, "tcp", VIP4, 80, 40)
            sticky = dial(world.client, "tcp", VIP6, 80, 10)
            sel = lb.selections()
            names = {p.ipv4: n for n, p in world.backends.items()}
            assert {names[a]: n for (a, _), n in sel[svc.key].items() if n} == dict(Counter(got["served"]))
            assert sum(sel[aff.key].values()) == 10 and len(set(sticky["served"])) == 1
            c = lb.counters()
            assert c["affinity_hit"] == 9
            assert (c["connect"], c["connect6"], c["getpeername"], c["getpeername6"]) == (50, 10, 50, 10), c
            used = sum(1 for per in sel.values() for n in per.values() if n)
            assert lb.map_usage()["selections"] == (used, 2 * 64)
            # b3 removed: its counter entry is deleted with it
            lb.upsert(Service(VIP4, 80, "tcp", [Backend(p.ipv4, TCP_PORT) for p in (b1, b2)]))
            gone = 1 if sel[svc.key][(b3.ipv4, TCP_PORT)] else 0
            assert lb.map_usage()["selections"][0] == used - gone
            after = lb.selections()[svc.key]
            assert after == {k: v for k, v in sel[svc.key].items() if k[0] != b3.ipv4}


def test_apply_dry_run_and_apply(world: World, tmp_path: Any) -> None:
    b1, b2, b3 = world.pods("b1", "b2", "b3")
    first = [Service(VIP4, 80, "tcp", [Backend(b1.ipv4, TCP_PORT)])]
    with pinned_dir() as pd:
        with holder(pd, first, cgroup=world.client.cgroup) as owner:
            f = tmp_path / "svc.yaml"
            f.write_text(
                f"services:\n  - address: {VIP4}\n    port: 80\n    backends:\n"
                f"      - {{address: {b2.ipv4}, port: {TCP_PORT}}}\n"
                f"  - address: {VIP6}\n    port: 53\n    protocol: udp\n    affinity: 30\n"
                f"    backends: [{{address: {b3.ipv6}, port: {UDP_PORT}, weight: 2}}]\n"
            )
            before = snapshot(pd)
            dry = ok_json("apply", "-f", str(f), "--pin-dir", pd, "--dry-run")
            assert snapshot(pd) == before
            assert dry["added"] == [f"[{VIP6}]:53/udp"] and dry["removed"] == []
            assert [u["service"] for u in dry["updated"]] == [f"{VIP4}:80/tcp"]
            assert sorted(dry["updated"][0]["changes"]) == sorted(
                [f"+backend {b2.ipv4}:{TCP_PORT}", f"-backend {b1.ipv4}:{TCP_PORT}"]
            )
            # apply takes the owner lock: refused while the owner lives
            one_line_error(socklb("apply", "-f", str(f), "--pin-dir", pd), str(owner.pid))
            assert snapshot(pd) == before
        # the owner is gone (its pins stay): apply adopts, syncs, and lets go
        r = socklb("apply", "-f", str(f), "--pin-dir", pd, "-o", "json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["added"] == [f"[{VIP6}]:53/udp"] and res["map_writes"] > 0
        assert pins_mod.holder_pid(pd) is None
        got = sorted(strip_ids(ok_json("services", "--pin-dir", pd)), key=key_of)
        want = servicefile.load(str(f))
        assert got == sorted(services_json(want), key=key_of)
        # the pinned links still balance, now to b2
        served = dial(world.client, "tcp", VIP4, 80, 5)
        assert served["served"] == ["b2"] * 5, served
        # applying the same file again changes nothing; services' json applies back
        again = ok_json("apply", "-f", str(f), "--pin-dir", pd)
        assert again["map_writes"] == 0 and again["unchanged"] == 2
        dumped = socklb("services", "--pin-dir", pd, "-o", "json").stdout
        back = socklb("apply", "-f", "-", "--pin-dir", pd, "--dry-run", "-o", "json", stdin=dumped)
        assert back.returncode == 0 and json.loads(back.stdout)["unchanged"] == 2, back.stderr


def test_bad_input_is_one_line_and_non_zero(world: World, tmp_path: Any) -> None:
    require_root()
    with pinned_dir() as pd:
        os.makedirs(pd)
        os.mkdir(os.path.join(pd, "junk"))  # on bpffs, not a socklb pin directory
        good = tmp_path / "ok.json"
        good.write_text('[{"address": "10.96.0.10", "port": 80}]')
        missing = "/sys/fs/bpf/socklb-test-missing-" + os.urandom(4).hex()
        for cmd in (["status"], ["services"], ["stats"], ["apply", "-f", str(good), "--dry-run"]):
            if cmd[0] != "apply":  # a dry run against a new directory: everything would be added
                one_line_error(socklb(*cmd, "--pin-dir", missing), "no such pin directory")
            one_line_error(socklb(*cmd, "--pin-dir", pd), "not a socklb pin directory")
            one_line_error(socklb(*cmd, "--pin-dir", str(tmp_path)), "not a socklb pin directory")
        # a socklb directory is needed for the real apply too
        one_line_error(socklb("apply", "-f", str(good), "--pin-dir", str(tmp_path)))
        one_line_error(socklb("services", "--pin-dir", pd, "10.96.0.10:http"), "VIP[:PORT]")
    cases = {
        "bad.yaml": ("services: [ {address: 10.96.0.10", "not valid YAML"),
        "bad.json": ('[{"address": "10.96.0.10", ', "not valid JSON"),
        "field.yaml": ("- {address: 10.96.0.10, port: 80, wieght: 2}", "unknown field 'wieght'"),
        "befield.json": ('[{"address": "10.96.0.10", "port": 80, "backends": [{"address": "10.244.1.2"}]}]', "'port'"),
        "value.yaml": ("- {address: 10.96.0.10, port: 99999}", "port"),
        "top.yaml": ("servces: []", "unknown field 'servces'"),
        "fam.yaml": ("- {address: 10.96.0.10, port: 80, backends: [{address: 'fd00::1', port: 1}]}", "services[0]"),
    }
    for name, (text, needle) in cases.items():
        f = tmp_path / name
        f.write_text(text)
        one_line_error(socklb("apply", "-f", str(f), "--dry-run"), needle)
        one_line_error(socklb("apply", "-f", str(f), "--pin-dir", "/sys/fs/bpf/socklb-test-x"), needle)
    one_line_error(socklb("apply", "-f", str(tmp_path / "nope.yaml"), "--dry-run"), "no such file")
    assert not os.path.exists("/sys/fs/bpf/socklb-test-x")
    assert not os.path.exists(missing)


def test_doctor() -> None:
    require_root()
    r = socklb("doctor", "-o", "json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    from socklb._native import features

    assert [f["name"] for f in rep["features"]] == [f.name for f in features.FEATURES]
    assert all(f["present"] is True for f in rep["features"] if f["required"])
    assert rep["kernel"] == os.uname().release
    assert rep["cgroup"]["cgroup2_mount"] and rep["privileges"]["sufficient"]
    assert rep["verdict"]["can_balance"] is True
    t = socklb("doctor")
    assert t.returncode == 0 and "socklb can balance here: yes" in t.stdout


def test_terminated_sockets_are_counted_in_the_pins(world: World) -> None:
    """The owner records the sockets it terminates in the pinned counters:
    ``socklb stats`` (another process) sees them."""
    from helpers import read_events, udp_svc

    from socklb import Balancer

    svc = udp_svc(world)
    with pinned_dir() as pd:
        lb = Balancer(pin_dir=pd, max_services=8, max_backends=16)
        try:
            assert lb.terminates_sockets
            lb.upsert(svc)
            lb.attach(world.client.cgroup)
            p = world.client.popen(
                [sys.executable, program("udp_stream"), VIP4, "53"], stdout=subprocess.PIPE, text=True
            )
            try:
                first = read_events(p, lambda ev: len(ev) >= 2)[0]["served"]
                names = [n for n in ("b1", "b2", "b3")]
                lb.upsert(svc.with_backends([b for b, n in zip(svc.backends, names) if n != first]))
            finally:
                p.kill()
                p.wait()
            c = ok_json("stats", "--pin-dir", pd)["counters"]
            assert c["terminated"] >= 1 and c["terminated"] == lb.counters()["terminated"], c
            assert c["terminated_tcp"] == 0, c  # a UDP service: every one of them was UDP
        finally:
            lb.destroy()


def test_stats_counts_live_socket_states_of_another_owner(world: World) -> None:
    """`socklb stats` counts the per-socket states of the owner's attached
    cgroups (read-only: a short-lived copy of the socket iterators)."""
    svc = Service(VIP4, 80, "tcp", [Backend(p.ipv4, TCP_PORT) for p in world.pods("b1", "b2")])
    with pinned_dir() as pd, holder(pd, [svc], cgroup=world.client.cgroup):
        assert ok_json("stats", "--pin-dir", pd)["socket_states"] == 0
        proc = world.client.popen(
            [sys.executable, program("tcp_hold_open"), VIP4, "80", "5"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
            before = snapshot(pd)
            assert ok_json("stats", "--pin-dir", pd)["socket_states"] == 5
            assert snapshot(pd) == before
        finally:
            proc.kill()
            proc.wait()
        assert ok_json("stats", "--pin-dir", pd)["socket_states"] == 0
