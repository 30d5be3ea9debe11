"""Pinned state: the pin directory's layout and permissions, state that
outlives its process (exit, SIGKILL), adoption by Balancer.open, hitless
program upgrades, the layout-version check, the one-owner lock and what a
balancer may touch.

The shared helpers (pin directories that are always removed, a process
holding a pinned balancer, raw readers of pinned maps...) are in tests/pinned.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from helpers import BACKENDS, TCP_PORT, UDP_PORT, VIP4, VIP6, World, child_env, dial, program, refused
from pinned import (
    PIN_ROOT,
    UNREACHABLE,
    LoadLoop,
    attached_programs,
    by_key,
    holder,
    probe,
    prog_exists,
    read_pinned,
    tree,
    write_meta,
)

from socklb import (
    Affinity,
    Backend,
    BackendState,
    Balancer,
    NotFoundError,
    Service,
)
from socklb._native import lib
from socklb._native.abi import META, U32
from socklb.datapath import pins as pins_mod
from socklb.datapath.cgroup import cgroup2_mount
from socklb.errors import IncompatiblePinsError, PinLockedError

# =============================================================================
# The services every pinned test programs
# =============================================================================


def bk(world: World, name: str, v6: bool = False, port: int = TCP_PORT, **kw: Any) -> Backend:
    pod = world.backends[name]
    return Backend(pod.ipv6 if v6 else pod.ipv4, port, **kw)


def rich_services(world: World) -> List[Service]:
    """One of everything a Service can say: algorithms, weights, every state,
    affinity, terminate_tcp, UDP, IPv6, no backends, terminating fallback."""
    T, Q, M = BackendState.TERMINATING, BackendState.QUARANTINED, BackendState.MAINTENANCE
    return [
        Service(VIP4, 80, "tcp", [bk(world, "b1"), bk(world, "b2", state=T), bk(world, "b3", weight=0)]),
        Service(
            VIP6,
            80,
            "tcp",
            [bk(world, "b1", True, weight=1), bk(world, "b2", True, weight=3), bk(world, "b3", True, weight=6)],
            algorithm="weighted",
        ),
        Service(
            "10.96.0.11",
            80,
            "tcp",
            [bk(world, "b1", weight=1), bk(world, "b2", weight=2), bk(world, "b3", state=M)],
            algorithm="maglev",
        ),
        Service(
            "10.96.0.12",
            80,
            "tcp",
            [bk(world, n) for n in BACKENDS],
            affinity=Affinity(600),
            terminate_tcp=True,
        ),
        Service(
            VIP4,
            UDP_PORT,
            "udp",
            [bk(world, "b1", port=UDP_PORT), bk(world, "b2", port=UDP_PORT), bk(world, "b3", port=UDP_PORT, state=Q)],
        ),
        Service("10.96.0.13", 80, "tcp", []),
        Service("10.96.0.14", 80, "tcp", [bk(world, "b2", state=T), bk(world, "b3", state=T)]),
        Service("fd00:96::b", 443, "tcp", [bk(world, "b3", True)], algorithm="maglev", affinity=Affinity(1)),
    ]


def check_rich_datapath(world: World) -> None:
    """What the client pod sees through the services of rich_services()."""
    r = probe(
        world.client,
        [(VIP4, 80, 12), (VIP6, 80, 30), ("10.96.0.11", 80, 20), ("10.96.0.13", 80, 2), ("10.96.0.14", 80, 20)],
    )
    assert r[0]["errors"] == [] and set(r[0]["served"]) == {"b1"}, r[0]  # b2 terminating, b3 drained
    assert set(r[0]["peers"]) == {f"{VIP4}:80"}
    assert r[1]["errors"] == [] and set(r[1]["served"]) <= set(BACKENDS) and "b3" in r[1]["served"], r[1]
    assert r[2]["errors"] == [] and set(r[2]["served"]) <= {"b1", "b2"}, r[2]  # b3 in maintenance
    assert r[3]["errors"] == [refused()] * 2, r[3]
    assert r[4]["errors"] == [] and set(r[4]["served"]) == {"b2", "b3"}, r[4]  # terminating fallback


def assert_unreachable(world: World, host: str = VIP4, port: int = 80) -> None:
    res = dial(world.client, "tcp", host, port, 2)
    assert res["served"] == [] and len(res["errors"]) == 2 and set(res["errors"]) <= UNREACHABLE, res


# =============================================================================
# Layout and permissions
# =============================================================================


def test_layout_and_permissions(world: World, pin_dir: str) -> None:
    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(rich_services(world)[0])
        att = lb.attach(world.client.cgroup)
        modes = tree(pin_dir)
        maps = sorted(os.listdir(os.path.join(pin_dir, "maps")))
        assert {"services", "slots", "backends", "maglev", "meta", "attachments"} <= set(maps)
        links = os.path.join(pin_dir, "links")
        assert os.listdir(links) == [str(os.stat(world.client.cgroup).st_ino)] == [str(att.cgroup_id)]
        link_pins = os.listdir(os.path.join(links, str(att.cgroup_id)))
        assert len(link_pins) == len(att.program_ids())
        # Every directory 0700, every pin 0600 at most: nothing for group or others.
        for p, mode in modes.items():
            assert mode & 0o077 == 0, f"{p} has mode {oct(mode)}"
            assert os.lstat(p).st_uid == 0
            if stat.S_ISDIR(mode):
                assert stat.S_IMODE(mode) == 0o700, f"{p} has mode {oct(mode)}"
        assert pins_mod.is_bpffs(pin_dir)
    # Closed, not destroyed: the pins stay.
    assert tree(pin_dir).keys() == modes.keys()


def run_unprivileged(pd: str) -> Dict[str, Any]:
    r = subprocess.run(
        [sys.executable, program("unprivileged_pins"), pd], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_other_users_cannot_read_or_open_pins(world: World, pin_dir: str) -> None:
    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(rich_services(world)[0])
        lb.attach(world.client.cgroup)
        before = lb.dump()
        out = run_unprivileged(pin_dir)
        for what in ("listdir", "listdir_maps", "open_services", "bpf_obj_get_meta", "balancer_open"):
            assert out[what] != "ok", f"nobody could {what}: {out}"
            assert out[what][1] in (errno.EACCES, errno.EPERM), out
        assert out["balancer_pin_dir"] != "ok", out
        # Nothing changed, and the owner still owns it.
        assert lb.dump() == before
        assert not lb.closed


def test_unprivileged_open_fails_with_a_socklb_error(world: World, pin_dir: str) -> None:
    """errors.py: every failure socklb reports is a SocklbError.  An
    unprivileged Balancer.open/Balancer(pin_dir=...) must raise
    PermissionDeniedError (which is also a PermissionError), not a bare OSError."""
    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(rich_services(world)[0])
    out = run_unprivileged(pin_dir)
    for what in ("balancer_open", "balancer_pin_dir"):
        name, err, is_socklb, is_perm = out[what]
        assert is_perm and err in (errno.EACCES, errno.EPERM), out
        assert is_socklb, f"{what} as nobody raised a bare {name}, not a SocklbError: {out}"


# =============================================================================
# State outlives its process
# =============================================================================


@pytest.mark.parametrize("how", ["sigkill", "exit", "close-exit"])
def test_balancing_survives_its_process(world: World, pin_dir: str, how: str) -> None:
    services = rich_services(world)
    then = "sleep" if how == "sigkill" else how
    with holder(pin_dir, services, world.client.cgroup, then=then) as proc:
        if how == "sigkill":
            assert dial(world.client, "tcp", VIP4, 80, 3)["served"] == ["b1"] * 3
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == (-signal.SIGKILL if how == "sigkill" else 0), proc.stderr
    # The process is gone; the pinned links and maps keep balancing.
    res = dial(world.client, "tcp", VIP4, 80, 10)
    assert res["errors"] == [] and res["served"] == ["b1"] * 10, res
    assert set(res["peers"]) == {f"{VIP4}:80"}
    check_rich_datapath(world)
    # The outsider pod was never attached.
    res = dial(world.outsider, "tcp", VIP4, 80, 2)
    assert res["served"] == [] and set(res["errors"]) <= UNREACHABLE

    # A new process adopts everything that was programmed.
    lb = Balancer.open(pin_dir)
    try:
        assert by_key(lb.services()) == by_key(services)
        atts = lb.attachments()
        assert [a.cgroup for a in atts] == [os.path.realpath(world.client.cgroup)]
        assert atts[0].attached and atts[0].pinned
        check_rich_datapath(world)
    finally:
        lb.destroy()
    assert not os.path.exists(pin_dir)
    assert_unreachable(world)


def test_adopt_reproduces_everything(world: World, pin_dir: str) -> None:
    services = rich_services(world)
    lb = Balancer(pin_dir=pin_dir)
    try:
        for s in services:
            lb.upsert(s)
        att = lb.attach(world.client.cgroup)
        ids_before = att.program_ids()
        dump_before = lb.dump()
        check_rich_datapath(world)
        connects = lb.counters()["connect"]
    finally:
        lb.close()
    assert not att.attached  # released by this object, still attached in the kernel
    check_rich_datapath(world)

    lb = Balancer.open(pin_dir)
    try:
        assert by_key(lb.services()) == by_key(services)
        for s in services:
            assert lb.get(s.key) == s
        (adopted,) = lb.attachments()
        assert adopted.cgroup == os.path.realpath(world.client.cgroup)
        assert adopted.cgroup_id == os.stat(world.client.cgroup).st_ino
        # The programs were replaced (an upgrade), the maps kept byte for byte.
        assert set(adopted.program_ids()).isdisjoint(ids_before)
        assert lb.dump() == dump_before
        assert lb.counters()["connect"] >= connects  # the counters are pinned too
        check_rich_datapath(world)

        # Syncing the same set changes nothing.
        r = lb.sync(services)
        assert not r.changed and r.map_writes == 0 and r.unchanged == len(services), r
        # A changed set converges.
        changed = [
            services[0].with_backends([bk(world, "b3")]),  # updated
            *services[1:5],
            services[6],  # services[5] removed
            services[7],
            Service("10.96.0.15", 80, "tcp", [bk(world, "b2")]),  # added
        ]
        r = lb.sync(changed)
        assert set(r.added) == {("10.96.0.15", 80, "tcp")}
        assert set(r.updated) == {services[0].key}
        assert set(r.removed) == {services[5].key}
        assert by_key(lb.services()) == by_key(changed)
        assert dial(world.client, "tcp", VIP4, 80, 6)["served"] == ["b3"] * 6
        assert dial(world.client, "tcp", "10.96.0.15", 80, 3)["served"] == ["b2"] * 3
        assert_unreachable(world, "10.96.0.13")
        assert lb.sync(changed).map_writes == 0
        dump_changed = lb.dump()
    finally:
        lb.close()

    # Balancer(pin_dir=...) on pinned state adopts too (it does not start afresh).
    with Balancer(pin_dir=pin_dir) as lb:
        assert by_key(lb.services()) == by_key(changed)
        assert lb.dump() == dump_changed
        assert len(lb.attachments()) == 1
        # Limits come from the pinned maps.
        assert (lb.max_services, lb.max_backends) == (65536, 262144)


def test_sockets_keep_their_translation_across_an_upgrade(world: World, pin_dir: str) -> None:
    """Sockets opened before an adopt (programs swapped) still show the VIP:
    getpeername of TCP and connected UDP, the source of unconnected UDP
    replies; and a UDP socket keeps its backend."""
    tcp = Service(VIP4, 80, "tcp", [bk(world, n) for n in BACKENDS])
    udp = Service(VIP4, UDP_PORT, "udp", [bk(world, n, port=UDP_PORT) for n in BACKENDS])
    lb = Balancer(pin_dir=pin_dir)
    try:
        lb.sync([tcp, udp])
        (att,) = [lb.attach(world.client.cgroup)]
        before_ids = att.program_ids()
        proc = world.client.popen(
            [sys.executable, "-I", program("long_lived_sockets"), VIP4, "80", str(UDP_PORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            first = json.loads(proc.stdout.readline() or "null")
            lb.close()
            lb = Balancer.open(pin_dir)
            assert set(lb.attachments()[0].program_ids()).isdisjoint(before_ids)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            second = json.loads(proc.stdout.readline() or "null")
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        assert first is not None and second is not None, err
        want = {"tcp_peer": f"{VIP4}:80", "cu_peer": f"{VIP4}:{UDP_PORT}", "u_src": f"{VIP4}:{UDP_PORT}"}
        assert {k: first[k] for k in want} == want, first
        assert second == first, (first, second)
    finally:
        lb.destroy()


def test_affinity_survives_an_upgrade(world: World, pin_dir: str) -> None:
    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(Service(VIP4, 80, "tcp", [bk(world, n) for n in BACKENDS], affinity=Affinity(600)))
        lb.attach(world.client.cgroup)
        (chosen,) = set(dial(world.client, "tcp", VIP4, 80, 5)["served"])
    with Balancer.open(pin_dir) as lb:
        assert dial(world.client, "tcp", VIP4, 80, 10)["served"] == [chosen] * 10
        assert lb.counters()["affinity_hit"] >= 14


def test_adopt_drops_attachments_of_removed_cgroups(world: World, pin_dir: str) -> None:
    gone = os.path.join(world.client.cgroup, f"gone-{uuid.uuid4().hex[:8]}")
    os.mkdir(gone)
    try:
        with Balancer(pin_dir=pin_dir) as lb:
            lb.upsert(rich_services(world)[0])
            lb.attach(gone)
            lb.attach(world.outsider.cgroup)
            gone_id = str(os.stat(gone).st_ino)
            assert gone_id in os.listdir(os.path.join(pin_dir, "links"))
    finally:
        os.rmdir(gone)
    with Balancer.open(pin_dir) as lb:
        assert [a.cgroup for a in lb.attachments()] == [os.path.realpath(world.outsider.cgroup)]
        assert os.listdir(os.path.join(pin_dir, "links")) == [str(os.stat(world.outsider.cgroup).st_ino)]
        assert dial(world.outsider, "tcp", VIP4, 80, 2)["served"] == ["b1"] * 2
    with Balancer.open(pin_dir) as lb:
        assert len(lb.attachments()) == 1


def test_limits_come_from_the_pins(pin_dir: str) -> None:
    with Balancer(pin_dir=pin_dir, max_services=3, max_backends=5, maglev_size=251, max_maglev_services=2):
        pass
    with Balancer.open(pin_dir) as lb:
        assert (lb.max_services, lb.max_backends, lb.maglev_size, lb.max_maglev_services) == (3, 5, 251, 2)
    # Other limits asked of an adopting balancer do not resize the pinned maps.
    with Balancer(pin_dir=pin_dir, max_services=100) as lb:
        assert lb.max_services == 3


def test_destroy_removes_everything(world: World, pin_dir: str) -> None:
    lb = Balancer(pin_dir=pin_dir)
    lb.upsert(rich_services(world)[0])
    lb.attach(world.client.cgroup)
    lb.attach(world.outsider.cgroup)
    lb.close()
    assert dial(world.outsider, "tcp", VIP4, 80, 2)["served"] == ["b1"] * 2
    lb = Balancer.open(pin_dir)
    assert len(lb.attachments()) == 2
    lb.destroy()
    assert lb.closed and not os.path.lexists(pin_dir)
    assert_unreachable(world)
    res = dial(world.outsider, "tcp", VIP4, 80, 2)
    assert res["served"] == [] and set(res["errors"]) <= UNREACHABLE
    assert attached_programs(world.lab.cgroup) == {}
    with pytest.raises(NotFoundError):
        Balancer.open(pin_dir)
    shutil.rmtree(pin_dir, ignore_errors=True)  # (see test_failed_open_creates_nothing)


def test_detach_of_an_adopted_attachment_removes_its_pins(world: World, pin_dir: str) -> None:
    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(rich_services(world)[0])
        lb.attach(world.client.cgroup)
        lb.attach(world.outsider.cgroup)
    with Balancer.open(pin_dir) as lb:
        (a_client,) = [a for a in lb.attachments() if a.cgroup == os.path.realpath(world.client.cgroup)]
        a_client.detach()
        assert os.listdir(os.path.join(pin_dir, "links")) == [str(os.stat(world.outsider.cgroup).st_ino)]
        assert_unreachable(world)
    with Balancer.open(pin_dir) as lb:
        assert [a.cgroup for a in lb.attachments()] == [os.path.realpath(world.outsider.cgroup)]


def test_without_pin_dir_close_leaves_nothing(world: World) -> None:
    before = set(os.listdir(PIN_ROOT)) if os.path.isdir(PIN_ROOT) else set()
    lb = Balancer()
    assert lb.pin_dir is None
    lb.upsert(rich_services(world)[0])
    lb.attach(world.client.cgroup)
    assert dial(world.client, "tcp", VIP4, 80, 2)["served"] == ["b1"] * 2
    lb.close()
    assert_unreachable(world)
    assert attached_programs(world.lab.cgroup) == {}
    after = set(os.listdir(PIN_ROOT)) if os.path.isdir(PIN_ROOT) else set()
    assert {n for n in after - before if not n.startswith("socklb-test-")} == set()


def test_open_without_pins_raises_not_found(pin_dir: str) -> None:
    with pytest.raises(NotFoundError) as e:
        Balancer.open(pin_dir)  # does not exist
    assert pin_dir in str(e.value)
    shutil.rmtree(pin_dir, ignore_errors=True)
    os.mkdir(pin_dir, 0o700)  # exists, empty
    with pytest.raises(NotFoundError):
        Balancer.open(pin_dir)
    # The lock was released: the directory can be used.
    with Balancer(pin_dir=pin_dir):
        pass


def test_failed_open_creates_nothing(pin_dir: str) -> None:
    """A Balancer.open that finds nothing to adopt must leave no trace: no
    directory created below /sys/fs/bpf, nothing added to an empty one."""
    with pytest.raises(NotFoundError):
        Balancer.open(pin_dir)
    assert not os.path.lexists(pin_dir), f"Balancer.open created {sorted(tree(pin_dir))}"
    os.mkdir(pin_dir, 0o700)
    with pytest.raises(NotFoundError):
        Balancer.open(pin_dir)
    assert os.listdir(pin_dir) == []


# =============================================================================
# Safe upgrades
# =============================================================================


def test_adopt_swaps_programs_without_a_failed_connect(world: World, pin_dir: str, tmp_path: Path) -> None:
    svc = Service(VIP4, 80, "tcp", [bk(world, n) for n in BACKENDS])
    lb = Balancer(pin_dir=pin_dir)
    try:
        lb.upsert(svc)
        att = lb.attach(world.client.cgroup)
        history = [att.program_ids()]
        cycles = 20
        with LoadLoop(world.client, VIP4, 80, tmp_path, max_seconds=120) as load:
            time.sleep(0.3)
            for _ in range(cycles):
                lb.close()
                lb = Balancer.open(pin_dir)
                (att,) = lb.attachments()
                ids = att.program_ids()
                assert set(ids).isdisjoint(history[-1]), (history[-1], ids)
                history.append(ids)
                assert lb.services() == [svc]
            time.sleep(0.3)
            res = load.finish()
        print(
            f"\nadopt/close cycles under load: {cycles} cycles, {res['attempted']} connects attempted, "
            f"{res['failed']} failed ({res['rate']:.0f}/s), errors {dict(res['errors'])}"
        )
        assert res["stopped_by"] == ["stop"], res
        assert res["failed"] == 0, f"{res['failed']} of {res['attempted']} connects failed: {dict(res['errors'])}"
        assert res["attempted"] >= 200, res
        assert set(res["served"]) == set(BACKENDS), res
        # The replaced programs are freed, not leaked (freeing is deferred a little).
        old = [i for ids in history[:-1] for i in ids]
        deadline = time.monotonic() + 10
        while any(prog_exists(i) for i in old) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [i for i in old if prog_exists(i)] == []
        assert all(prog_exists(i) for i in history[-1])
    finally:
        lb.destroy()
    assert_unreachable(world)


def _pins_snapshot(pd: str) -> Tuple[Any, ...]:
    return (
        sorted(tree(pd).items()),
        read_pinned(pd, "services"),
        read_pinned(pd, "slots"),
        read_pinned(pd, "backends"),
        read_pinned(pd, "meta"),
    )


@pytest.mark.parametrize("how", ["version", "magic", "no-meta"])
def test_incompatible_pins_are_refused_untouched(world: World, pin_dir: str, how: str) -> None:
    version = lib.SOCKLB_LAYOUT_VERSION
    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(rich_services(world)[0])
        (att,) = [lb.attach(world.client.cgroup)]
        prog_ids = att.program_ids()
    raw = read_pinned(pin_dir, "meta")[U32.pack(0)]
    meta = META.unpack(raw)
    magic, found, limits = meta.magic, meta.layout_version, meta[2:]
    assert (magic, found) == (lib.SOCKLB_META_MAGIC, version)
    if how == "version":
        write_meta(pin_dir, magic, version + 1, limits)
    elif how == "magic":
        write_meta(pin_dir, 0x12345678, version, limits)
    else:
        os.unlink(os.path.join(pin_dir, "maps", "meta"))
    before = _pins_snapshot(pin_dir) if how != "no-meta" else sorted(tree(pin_dir).items())
    attempts: Tuple[Callable[[], Balancer], ...] = (lambda: Balancer.open(pin_dir), lambda: Balancer(pin_dir=pin_dir))
    for attempt in attempts:
        with pytest.raises(IncompatiblePinsError) as e:
            attempt()
        msg = str(e.value)
        assert e.value.pin_dir == os.path.realpath(pin_dir) and pin_dir in msg
        assert e.value.expected == version and f"uses {version}" in msg
        if how == "version":
            assert e.value.found == version + 1 and f"version {version + 1}" in msg
        elif how == "magic":
            assert "not socklb's" in msg
        else:
            assert "no meta map" in msg
        # Nothing was modified: pins, maps, programs on the cgroup, the datapath.
        after = _pins_snapshot(pin_dir) if how != "no-meta" else sorted(tree(pin_dir).items())
        assert after == before
        progs = attached_programs(world.lab.cgroup)
        # bpftool lists them by attach type, not in the loader's order.
        assert sorted(i for i, _ in progs[os.path.realpath(world.client.cgroup)]) == sorted(prog_ids)
        assert dial(world.client, "tcp", VIP4, 80, 3)["served"] == ["b1"] * 3
    # The pins can still be removed (unpinning detaches the links).
    pins_mod.remove(pin_dir)
    assert not os.path.lexists(pin_dir)
    assert_unreachable(world)


# =============================================================================
# One owner
# =============================================================================


@pytest.mark.parametrize("end", ["sigkill", "exit"])
def test_one_owner_at_a_time(world: World, pin_dir: str, end: str) -> None:
    services = rich_services(world)[:2]
    with holder(pin_dir, services, world.client.cgroup) as proc:
        attempts: Tuple[Callable[[], Balancer], ...] = (
            lambda: Balancer.open(pin_dir),
            lambda: Balancer(pin_dir=pin_dir),
        )
        for attempt in attempts:
            with pytest.raises(PinLockedError) as e:
                attempt()
            assert e.value.pid == proc.pid
            assert str(proc.pid) in str(e.value) and e.value.pin_dir == os.path.realpath(pin_dir)
        # The refused opener changed nothing; the holder keeps balancing.
        assert dial(world.client, "tcp", VIP4, 80, 3)["served"] == ["b1"] * 3
        if end == "sigkill":
            proc.send_signal(signal.SIGKILL)
        else:  # a normal exit: the holder returns from reading its stdin
            assert proc.stdin is not None
            proc.stdin.close()
        assert proc.wait(timeout=30) == (-signal.SIGKILL if end == "sigkill" else 0)
    with Balancer.open(pin_dir) as lb:
        assert by_key(lb.services()) == by_key(services)
        assert len(lb.attachments()) == 1
        # ... and now this process is the owner.
        with pytest.raises(PinLockedError) as e:
            Balancer.open(pin_dir)
        assert e.value.pid == os.getpid()


# =============================================================================
# What a balancer may touch
# =============================================================================


def test_attaches_only_where_asked(world: World, pin_dir: str) -> None:
    client_cg = os.path.realpath(world.client.cgroup)

    def check(lb: Balancer) -> None:
        (att,) = lb.attachments()
        mine = set(att.program_ids())
        # In the lab's cgroups: programs on the client's cgroup only, and all of them ours.
        in_lab = attached_programs(world.lab.cgroup)
        assert list(in_lab) == [client_cg], in_lab
        assert {i for i, _ in in_lab[client_cg]} == mine
        # In the whole hierarchy (other balancers may be attached elsewhere): ours only there.
        everywhere = attached_programs(cgroup2_mount())
        assert {cg for cg, progs in everywhere.items() if mine & {i for i, _ in progs}} == {client_cg}

    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(rich_services(world)[0])
        lb.attach(world.client.cgroup)
        check(lb)
    with Balancer.open(pin_dir) as lb:
        check(lb)


def test_non_service_traffic_untouched_after_adopt(world: World, pin_dir: str) -> None:
    with Balancer(pin_dir=pin_dir) as lb:
        for s in rich_services(world):
            lb.upsert(s)
        lb.attach(world.client.cgroup)
    with Balancer.open(pin_dir):
        b2 = world.backends["b2"]
        r = probe(world.client, [(b2.ipv4, TCP_PORT, 4), (b2.ipv6, TCP_PORT, 2), (VIP4, 81, 2), (VIP6, 8080, 2)])
        assert r[0]["served"] == ["b2"] * 4 and set(r[0]["peers"]) == {f"{b2.ipv4}:{TCP_PORT}"}, r[0]
        assert r[1]["served"] == ["b2"] * 2 and set(r[1]["peers"]) == {f"{b2.ipv6}:{TCP_PORT}"}, r[1]
        for other in r[2:]:
            assert other["served"] == [] and len(other["errors"]) == 2 and set(other["errors"]) <= UNREACHABLE
        udp = dial(world.client, "udp", b2.ipv4, UDP_PORT, 2)
        assert udp["served"] == ["b2"] * 2 and set(udp["peers"]) == {f"{b2.ipv4}:{UDP_PORT}"}
