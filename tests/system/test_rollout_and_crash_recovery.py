"""Resilience, in the lab: a rolling replacement of every backend under load
with zero failed connections; a controller SIGKILLed in the middle of a
10,000-service sync (traffic keeps flowing, every service keeps its old or
its new backends, the next controller adopts and converges); adoption after a
kill sees each service as its old or its new version; invalid input and
capacity limits change nothing at all."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest
from helpers import PROGRAMS, TCP_PORT, VIP4, VIP6, World, child_env, dial, raw_map, require_root
from pinned import (
    LoadLoop,
    attached_programs,
    by_key,
    obj_get,
    pinned_dir,
    probe,
    read_pinned,
    svc_to_json,
    tree,
)
from tables import check_tables

from socklb import (
    Affinity,
    Backend,
    BackendState,
    Balancer,
    CapacityError,
    InvalidValueError,
    NotCgroupV2Error,
    NotFoundError,
    Service,
)
from socklb._native import lib
from socklb._native.abi import BACKEND_VAL, SLOT_KEY, SLOT_VAL, SVC_KEY, SVC_VAL, U32
from socklb.datapath.limits import DEFAULT_MAGLEV_SIZE

FLEET = ("r1", "r2", "r3", "r4", "r5", "r6")


class Fleet:
    """A lab of its own: a client pod and six backend pods r1..r6 serving TCP 8080."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.client = lab.add_pod("client")
        self.pods = {n: lab.add_pod(n) for n in FLEET}
        for pod in self.pods.values():
            pod.serve(tcp=[TCP_PORT])
        self.by_ip = {p.ipv4: n for n, p in self.pods.items()}

    def backends(self, names: Sequence[str], port: int = TCP_PORT, **kw: Any) -> List[Backend]:
        return [Backend(self.pods[n].ipv4, port, **kw) for n in names]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    require_root()
    from socklb.testing.lab import Lab

    with Lab() as lab:
        yield Fleet(lab)


@pytest.fixture
def pin_dir() -> Iterator[str]:
    with pinned_dir() as pd:
        yield pd


# =============================================================================
# Rolling replacement of every backend under load
# =============================================================================

ROLL_PORT = 9090


def test_rolling_replacement_under_load(fleet: Fleet, tmp_path: Path) -> None:
    vip = "10.96.1.1"
    old, new = FLEET[:3], FLEET[3:]
    step = 0.4  # between changes: thousands of connections each
    servers: Dict[str, subprocess.Popen[str]] = {}
    try:
        for n in old:
            servers[n] = fleet.pods[n].serve(tcp=[ROLL_PORT])
        state: Dict[str, BackendState] = {n: BackendState.ACTIVE for n in old}

        def program(lb: Balancer) -> None:
            bs = [Backend(fleet.pods[n].ipv4, ROLL_PORT, state=s) for n, s in state.items()]
            assert lb.upsert(Service(vip, 80, "tcp", bs))

        with Balancer() as lb:
            program(lb)
            lb.attach(fleet.client.cgroup)
            with LoadLoop(fleet.client, vip, 80, tmp_path, procs=2, max_seconds=120) as load:
                time.sleep(step)
                for o, n in zip(old, new):
                    servers[n] = fleet.pods[n].serve(tcp=[ROLL_PORT])  # the new pod is ready
                    state[n] = BackendState.ACTIVE
                    program(lb)
                    time.sleep(step)
                    state[o] = BackendState.TERMINATING  # the old pod is told to go
                    program(lb)
                    time.sleep(step)
                    del state[o]  # ... and leaves the endpoints
                    program(lb)
                    time.sleep(step)
                    # Its connections have finished: the old pod stops listening.
                    # Any later connect to it would fail (ECONNREFUSED).
                    gone = servers.pop(o)
                    gone.terminate()
                    gone.wait(10)
                    time.sleep(step)
                res = load.finish()
            assert set(state) == set(new)
            after = dial(fleet.client, "tcp", vip, 80, 30)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)
    summary = (
        f"rolling replacement of {len(old)} backends by {len(new)}: {res['attempted']} connections attempted, "
        f"{res['failed']} failed, {res['rate']:.0f}/s over 2 client processes, errors {dict(res['errors'])}, "
        f"served {dict(sorted(res['served'].items()))}"
    )
    print("\n" + summary)
    assert res["failed"] == 0, summary
    assert res["stopped_by"] == ["stop", "stop"], summary  # the load covered the whole rollout
    assert res["attempted"] >= 1000, summary
    assert set(res["served"]) == set(FLEET), summary
    assert after["errors"] == [] and set(after["served"]) == set(new), after


# =============================================================================
# SIGKILL in the middle of a 10,000-service sync
# =============================================================================

N_SERVICES = 10_000
UNTOUCHED_VIP = "10.96.200.1"


def _vip(i: int) -> str:
    return f"10.96.{1 + i // 250}.{1 + i % 250}"


class Lines:
    """The lines a child prints, read by a thread: waiting for one is bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._q: queue.Queue[str] = queue.Queue()
        self.seen: List[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self._q.put(line.strip())
            self._q.put("<eof>")

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float) -> str:
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from the child within {timeout}s; so far {self.seen}") from None
        self.seen.append(line)
        return line

    def rest(self, timeout: float = 10) -> List[str]:
        while not self.seen or self.seen[-1] != "<eof>":
            self.next(timeout)
        return self.seen


def _addr(raw16: bytes) -> str:
    ip = ipaddress.IPv6Address(raw16)
    return str(ip.ipv4_mapped or ip)


class PinnedTables:
    """The raw pinned service, slot and backend maps, decoded."""

    def __init__(self, pd: str) -> None:
        self.services = read_pinned(pd, "services", 1 << 16)
        self.slots = read_pinned(pd, "slots", 1 << 19)
        self.backends = read_pinned(pd, "backends", 1 << 18)

    def service(self, vip: str, port: int = 80) -> Tuple[bytes, Any]:
        """The key and the decoded value (abi.SVC_VAL's named tuple) of a service."""
        for k, v in self.services.items():
            sk = SVC_KEY.unpack(k)
            if _addr(sk.addr) == vip and socket.ntohs(sk.port) == port:
                return k, SVC_VAL.unpack(v)
        raise KeyError(vip)

    def choices(self) -> Dict[str, Set[str]]:
        """For each service VIP, the backend addresses its current list can choose."""
        out: Dict[str, Set[str]] = {}
        for k, v in self.services.items():
            addr = _addr(SVC_KEY.unpack(k).addr)
            sv = SVC_VAL.unpack(v)
            list_id, count = sv.list_id, sv.count
            chosen = set()
            for i in range(count):
                slot = self.slots.get(SLOT_KEY.pack(list_id=list_id, index=i))
                assert slot is not None, f"service {addr}: slot {i} of list {list_id} is missing"
                bid = SLOT_VAL.unpack(slot).backend_id
                b = self.backends.get(U32.pack(bid))
                assert b is not None, f"service {addr}: backend {bid} of list {list_id} is missing"
                chosen.add(_addr(BACKEND_VAL.unpack(b).addr))
            out[addr] = chosen
        return out


def _wait_for(
    pd: str, map_name: str, key: bytes, present: bool, value: Optional[bytes], limit: float, maglev_size: int
) -> bool:
    """Poll one element of a pinned map (one syscall a time) until it is
    present (with another value than ``value``, if given) or gone."""
    ksz, vsz = {
        "services": (SVC_KEY.size, SVC_VAL.size),
        "slots": (SLOT_KEY.size, SLOT_VAL.size),
        "maglev": (U32.size, 4 * maglev_size),
    }.get(map_name, (U32.size, BACKEND_VAL.size))
    fd = obj_get(os.path.join(pd, "maps", map_name))
    try:
        m = raw_map(fd, map_name, ksz, vsz)
        end = time.monotonic() + limit
        while time.monotonic() < end:
            v = m.lookup(key)
            if (v is not None) == present and (value is None or v != value):
                return True
            time.sleep(0.0002)
        return False
    finally:
        os.close(fd)


class SyncVictim:
    """A controller process with a pinned balancer: it syncs ``first`` (and
    attaches to ``cgroup``), then, on :meth:`kill_during`, syncs ``second`` in
    one call and is SIGKILLed during the given phase of that sync, spotted by
    watching the pinned maps change:

    * ``writing``: the first backend of the new state appears (nothing swapped yet);
    * ``swapping``: the service at a quarter of the list points to its new list;
    * ``cleaning``: the first old list is deleted (every service swapped).

    The process dies when the system call it is in returns: with batched map
    updates, the batch that was running when the phase was spotted completes.
    """

    def __init__(
        self,
        pd: str,
        first: Sequence[Service],
        second: Sequence[Service],
        tmp: Path,
        cgroup: Optional[str] = None,
        **limits: int,
    ) -> None:
        self.pd = pd
        self.second = second
        self.maglev_size = limits.get("maglev_size", DEFAULT_MAGLEV_SIZE)
        spec = {
            "pin_dir": pd,
            "cgroup": cgroup,
            "first": [svc_to_json(s) for s in first],
            "second": [svc_to_json(s) for s in second],
            "limits": limits,
        }
        path = tmp / f"spec-{os.getpid()}-{id(self)}.json"
        path.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(
            [sys.executable, str(PROGRAMS / "sync_victim.py"), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self.lines = Lines(self.proc)
        self.log = self.lines.seen
        try:
            self.lines.next(120)
            self.lines.next(60)
        except BaseException:
            self.close()
            raise
        if self.log[-1] != "ready":
            err = self.close()
            raise AssertionError(f"the controller did not get ready: {self.log} {err}")

    def kill_during(self, phase: str) -> None:
        t0 = PinnedTables(self.pd)
        watch: Tuple[str, bytes, bool, Optional[bytes]]
        if phase == "writing":
            watch = ("backends", U32.pack(max(U32.unpack(k)[0] for k in t0.backends) + 1), True, None)
        elif phase == "swapping":
            key, val = t0.service(self.second[len(self.second) // 4].address)
            watch = ("services", key, True, SVC_VAL.pack(**val._asdict()))
        else:
            _key, val = t0.service(self.second[1].address)
            if val.algo == lib.SOCKLB_ALGO_MAGLEV:
                watch = ("maglev", U32.pack(val.list_id), False, None)
            else:
                watch = ("slots", SLOT_KEY.pack(list_id=val.list_id, index=0), False, None)
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.lines.next(60) == "syncing", self.log
        map_name, key, present, value = watch
        seen = _wait_for(self.pd, map_name, key, present, value, limit=20, maglev_size=self.maglev_size)
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL
        self.lines.rest()
        assert seen, f"the {phase} phase was never seen: {self.log}"
        assert not any(x.startswith("done") for x in self.log), f"the sync finished before the kill: {self.log}"

    def close(self) -> str:
        """Kill the process if it still runs; its standard error."""
        if self.proc.poll() is None:
            self.proc.kill()
        return str(self.proc.communicate(timeout=30)[1])


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["writing", "swapping", "cleaning"])
def test_sigkill_in_the_middle_of_a_10000_service_sync(
    fleet: Fleet, pin_dir: str, tmp_path: Path, phase: str, seed: int
) -> None:
    """A controller is SIGKILLed during one sync() that rewrites the backends of
    10,000 services: while it writes the new backends and lists ("writing"),
    while it swaps the services to their new lists ("swapping") or while it
    deletes the old lists and backends ("cleaning").  The kill is triggered by
    watching the pinned maps change.  The services probed by real connects
    are a sample drawn with the run's seed (SOCKLB_TEST_SEED)."""
    old, new, kept = ("r1", "r2"), ("r3", "r4"), ("r5", "r6")
    names = {frozenset(old): "old", frozenset(new): "new"}
    untouched = Service(UNTOUCHED_VIP, 80, "tcp", fleet.backends(kept))
    first = [untouched] + [Service(_vip(i), 80, "tcp", fleet.backends(old)) for i in range(N_SERVICES)]
    second = [untouched] + [s.with_backends(fleet.backends(new)) for s in first[1:]]
    rng = random.Random(seed)
    sample = [0, *rng.sample(range(1, N_SERVICES + 1), 40)]
    victim = SyncVictim(pin_dir, first, second, tmp_path, fleet.client.cgroup)
    log = victim.log
    lb: Optional[Balancer] = None
    try:
        with LoadLoop(fleet.client, UNTOUCHED_VIP, 80, tmp_path, procs=1, max_seconds=150) as load:
            time.sleep(0.3)
            victim.kill_during(phase)

            # Left by the killed writer: every service chooses from its old set
            # or its new set, never a mix and never a missing entry.
            t1 = PinnedTables(pin_dir)
            choices = t1.choices()
            assert len(choices) == N_SERVICES + 1
            states = {}
            for vip, addrs in choices.items():
                got = frozenset(fleet.by_ip[a] for a in addrs)
                if vip == UNTOUCHED_VIP:
                    assert got == frozenset(kept)
                    continue
                assert got in names, f"{vip} chooses from {sorted(got)}"
                states[vip] = names[got]
            n_new = sum(1 for s in states.values() if s == "new")
            extra = (len(t1.backends) - 2 * (N_SERVICES + 1), len(t1.slots) - 2 * (N_SERVICES + 1))
            # Where the kill landed.  (A SIGKILL ends the process between
            # system calls: a batched map update it interrupts still completes.)
            if phase == "swapping":
                assert n_new > 0, n_new  # the watched service was swapped
            elif phase == "cleaning":
                assert n_new == N_SERVICES, n_new  # deleting starts after the swap
            # ... and through real connects, for a sample (the untouched service first).
            r = probe(fleet.client, [(first[i].address, 80, 3) for i in sample])
            for i, res in zip(sample, r):
                got_names = set(res["served"])
                assert res["errors"] == [] and len(res["served"]) == 3, (first[i], res)
                assert set(res["peers"]) == {f"{first[i].address}:80"}, res
                if i == 0:
                    assert got_names <= set(kept)
                else:
                    want = old if states[first[i].address] == "old" else new
                    assert got_names <= set(want), (first[i], states[first[i].address], res)

            # A new controller adopts the half-done state and repairs it.
            t = time.monotonic()
            lb = Balancer.open(pin_dir)
            adopt_s = time.monotonic() - t
            assert [a.cgroup for a in lb.attachments()] == [os.path.realpath(fleet.client.cgroup)]
            adopted = {s.key: s for s in lb.services()}
            assert len(adopted) == N_SERVICES + 1
            for s_old, s_new in zip(first, second):
                assert adopted[s_old.key] in (s_old, s_new), adopted[s_old.key]
            n_adopted_new = sum(1 for s in second[1:] if adopted[s.key] == s)
            dump = lb.dump()
            assert len(dump["backends"]) == 2 * (N_SERVICES + 1) and len(dump["slots"]) == 2 * (N_SERVICES + 1)

            # The final desired state: all rewritten, 50 removed, 50 added.
            final = second[:-50] + [Service(_vip(N_SERVICES + i), 80, "tcp", fleet.backends(new)) for i in range(50)]
            t = time.monotonic()
            res_sync = lb.sync(final)
            sync_s = time.monotonic() - t
            assert len(res_sync.added) == 50 and len(res_sync.removed) == 50, res_sync
            assert by_key(lb.services()) == by_key(final)
            dump = lb.dump()
            total_backends = sum(len(s.backends) for s in final)
            assert len(dump["services"]) == len(final)
            assert len(dump["backends"]) == total_backends
            assert len(dump["slots"]) == total_backends  # every backend usable
            assert dump["maglev"] == {}
            assert lb.sync(final).map_writes == 0
            r = probe(fleet.client, [(final[i].address, 80, 3) for i in (1, 2, N_SERVICES // 2, len(final) - 1)])
            for res in r:
                assert res["errors"] == [] and set(res["served"]) <= set(new), res
            time.sleep(0.2)
            load_res = load.finish()
    finally:
        victim.close()
        if lb is not None:
            lb.destroy()
    summary = (
        f"SIGKILL while {phase}: {n_new} of {N_SERVICES} services already swapped, {extra[0]} backend and "
        f"{extra[1]} slot entries in excess; adopted {n_adopted_new} as new in {adopt_s:.2f}s, final sync "
        f"{sync_s:.2f}s ({res_sync.map_writes} writes); untouched service: {load_res['attempted']} connections "
        f"attempted, {load_res['failed']} failed, errors {dict(load_res['errors'])}"
    )
    print("\n" + summary + "\nchild: " + " | ".join(x for x in log if x))
    assert load_res["failed"] == 0, summary
    assert load_res["stopped_by"] == ["stop"], summary
    assert load_res["attempted"] >= 300, summary
    assert set(load_res["served"]) == set(kept), summary


def _mid_sync_cases() -> Dict[str, Tuple[List[Service], List[Service]]]:
    """(before, after) of a sync of 2000 services, by what the sync changes."""
    n = 2000
    T, M, Q = BackendState.TERMINATING, BackendState.MAINTENANCE, BackendState.QUARANTINED

    def b(i: int, **kw: Any) -> Backend:
        return Backend(f"10.244.200.{i}", 80, **kw)

    def both(old: List[Backend], new: List[Backend], **kw: Any) -> Tuple[List[Service], List[Service]]:
        first = [Service(_vip(i), 80, "tcp", old, **kw) for i in range(n)]
        return first, [s.with_backends(new) for s in first]

    weighted_first = [Service(_vip(i), 80, "tcp", [b(1), b(2, weight=2)], "weighted") for i in range(n)]
    return {
        # Backends that are never chosen (weight 0, maintenance, quarantined,
        # terminating while an active one is left) come and go.
        "states": both([b(1), b(2), b(3, state=M)], [b(1, state=T), b(4), b(5, weight=0), b(6, state=Q)]),
        # A kept backend's weight changes, one backend is added.
        "weights": both([b(1), b(2, weight=2)], [b(1, weight=3), b(2, weight=2), b(3)], algorithm="maglev"),
        # The algorithm and the affinity change too.
        "algorithm": (
            weighted_first,
            [
                Service(s.address, 80, "tcp", [b(1, weight=3), b(3)], "maglev", Affinity(60), terminate_tcp=True)
                for s in weighted_first
            ],
        ),
    }


@pytest.mark.parametrize("phase", ["writing", "swapping", "cleaning"])
@pytest.mark.parametrize("case", ["states", "weights", "algorithm"])
def test_sigkill_mid_sync_adopts_each_service_as_its_old_or_new_version(
    pin_dir: str, tmp_path: Path, case: str, phase: str
) -> None:
    """After a SIGKILL in the middle of a sync, Balancer.open must see each
    service as it was before the sync or as the sync made it, never a mixture,
    and what it reports must be what the maps hold (else a later sync of that
    state writes nothing and the kernel keeps something else).  No traffic:
    the services point at unused test addresses and nothing is attached."""
    require_root()
    first, second = _mid_sync_cases()[case]
    victim = SyncVictim(pin_dir, first, second, tmp_path, maglev_size=251, max_maglev_services=4096)
    try:
        victim.kill_during(phase)
    finally:
        victim.close()
    with Balancer.open(pin_dir) as lb:
        adopted = {s.key: s for s in lb.services()}
        assert len(adopted) == len(first)
        # What the balancer reports is what the kernel has.
        check_tables(lb.dump(), adopted, lb.maglev_size)
        mixed = [(a, b) for a, b in zip(first, second) if adopted[a.key] not in (a, b)]
        n_new = sum(1 for b in second if adopted[b.key] == b)
        assert mixed == [], (
            f"after a SIGKILL while {phase}, {len(mixed)} of {len(first)} services were adopted as neither "
            f"their old nor their new version ({n_new} new); e.g. {mixed[0][0]} was adopted as "
            f"{adopted[mixed[0][0].key]!r}; before the sync it was {mixed[0][0]!r}; the sync made it {mixed[0][1]!r}"
        )
        lb.sync(second)
        assert by_key(lb.services()) == by_key(second)
        check_tables(lb.dump(), {s.key: s for s in second}, lb.maglev_size)


# =============================================================================
# Invalid input changes nothing
# =============================================================================


def _everything(lb: Balancer, pd: str, world: World) -> Tuple[Any, ...]:
    return (
        lb.dump(),
        lb.services(),
        [(a.cgroup, a.cgroup_id, a.attached, a.program_ids()) for a in lb.attachments()],
        sorted(tree(pd).items()),
        read_pinned(pd, "services"),
        read_pinned(pd, "slots"),
        read_pinned(pd, "backends"),
        read_pinned(pd, "meta"),
        attached_programs(world.lab.cgroup),
        (lb.max_services, lb.max_backends, lb.max_maglev_services, lb.maglev_size),
    )


def test_invalid_input_changes_nothing(world: World, pin_dir: str) -> None:
    b1, b2, b3 = world.pods("b1", "b2", "b3")
    good = [
        Service(VIP4, 80, "tcp", [Backend(b1.ipv4, TCP_PORT), Backend(b2.ipv4, TCP_PORT, weight=2)], "weighted"),
        Service(VIP6, 80, "tcp", [Backend(b3.ipv6, TCP_PORT)], "maglev", Affinity(60)),
    ]
    small = Balancer(pin_dir=pin_dir, max_services=3, max_backends=5, maglev_size=251, max_maglev_services=1)
    try:
        lb = small
        lb.sync(good)
        lb.attach(world.client.cgroup)
        before = _everything(lb, pin_dir, world)
        cg_file = os.path.join(world.client.cgroup, "cgroup.procs")
        v1 = [line.split()[4] for line in open("/proc/self/mountinfo") if " - cgroup " in line]
        third = Service("10.96.0.11", 80, "tcp", [Backend(b1.ipv4, TCP_PORT)])
        with tempfile.TemporaryDirectory() as plain_dir:
            cases: List[Tuple[str, Callable[[], Any], type]] = [
                # Values: refused when made, before any balancer sees them.
                ("address not an IP", lambda: Service("10.96.0.300", 80), InvalidValueError),
                ("address garbage", lambda: Service("not-an-ip", 80), InvalidValueError),
                ("address v4-mapped", lambda: Service("::ffff:10.96.0.10", 80), InvalidValueError),
                ("address unspecified", lambda: Service("0.0.0.0", 80), InvalidValueError),
                ("address multicast", lambda: Service("ff02::1", 80), InvalidValueError),
                ("address not a str", lambda: Service(167772170, 80), InvalidValueError),  # type: ignore[arg-type]
                ("port 0", lambda: Service(VIP4, 0), InvalidValueError),
                ("port 65536", lambda: Service(VIP4, 65536), InvalidValueError),
                ("port str", lambda: Service(VIP4, "80"), InvalidValueError),  # type: ignore[arg-type]
                ("port bool", lambda: Service(VIP4, True), InvalidValueError),
                ("protocol", lambda: Service(VIP4, 80, "sctp"), InvalidValueError),
                ("algorithm", lambda: Service(VIP4, 80, algorithm="roundrobin"), InvalidValueError),
                ("backend port", lambda: Backend(b1.ipv4, 0), InvalidValueError),
                ("backend address", lambda: Backend("10.244.1", 80), InvalidValueError),
                ("weight -1", lambda: Backend(b1.ipv4, 80, weight=-1), InvalidValueError),
                ("weight 65536", lambda: Backend(b1.ipv4, 80, weight=65536), InvalidValueError),
                ("weight float", lambda: Backend(b1.ipv4, 80, weight=1.5), InvalidValueError),  # type: ignore[arg-type]
                ("weight bool", lambda: Backend(b1.ipv4, 80, weight=True), InvalidValueError),
                ("state", lambda: Backend(b1.ipv4, 80, state="gone"), InvalidValueError),
                ("affinity 0", lambda: Affinity(0), InvalidValueError),
                ("affinity 86401", lambda: Affinity(86401), InvalidValueError),
                ("affinity int", lambda: Service(VIP4, 80, affinity=30), InvalidValueError),  # type: ignore[arg-type]
                ("terminate_tcp str", lambda: Service(VIP4, 80, terminate_tcp="yes"), InvalidValueError),  # type: ignore[arg-type]
                (
                    "duplicate backends",
                    lambda: Service(VIP4, 80, "tcp", [Backend(b1.ipv4, TCP_PORT), Backend(b1.ipv4, TCP_PORT, 2)]),
                    InvalidValueError,
                ),
                ("mixed families", lambda: Service(VIP4, 80, "tcp", [Backend(b1.ipv6, TCP_PORT)]), InvalidValueError),
                ("mixed families v6", lambda: Service(VIP6, 80, "tcp", [Backend(b1.ipv4, 80)]), InvalidValueError),
                ("backends str", lambda: Service(VIP4, 80, "tcp", "b1"), InvalidValueError),  # type: ignore[arg-type]
                ("backend tuple", lambda: Service(VIP4, 80, "tcp", [(b1.ipv4, 80)]), InvalidValueError),  # type: ignore[list-item]
                # The balancer: bad arguments.
                ("upsert str", lambda: lb.upsert("10.96.0.10:80"), InvalidValueError),  # type: ignore[arg-type]
                ("upsert None", lambda: lb.upsert(None), InvalidValueError),  # type: ignore[arg-type]
                ("sync duplicate", lambda: lb.sync([good[0], third, good[0]]), InvalidValueError),
                ("sync non-service", lambda: lb.sync([third, "x"]), InvalidValueError),  # type: ignore[list-item]
                ("remove unknown", lambda: lb.remove(("10.96.0.99", 80, "tcp")), NotFoundError),
                ("remove other proto", lambda: lb.remove((VIP4, 80, "udp")), NotFoundError),
                ("remove bad address", lambda: lb.remove(("10.96.0.999", 80, "tcp")), InvalidValueError),
                ("remove bad proto", lambda: lb.remove((VIP4, 80, "sctp")), InvalidValueError),
                ("remove str", lambda: lb.remove("10.96.0.10"), InvalidValueError),  # type: ignore[arg-type]
                ("get unknown", lambda: lb.get((VIP4, 81)), NotFoundError),
                # Capacity: 3 services, 5 backends, 1 maglev service.
                (
                    "too many backends",
                    lambda: lb.upsert(good[0].with_backends([Backend(f"10.244.9.{i}", 80) for i in range(1, 6)])),
                    CapacityError,
                ),
                (
                    "too many services",
                    lambda: lb.sync([*good, third, Service("10.96.0.12", 80)]),
                    CapacityError,
                ),
                (
                    "too many maglev services",
                    lambda: lb.upsert(Service("10.96.0.12", 80, "tcp", [], "maglev")),
                    CapacityError,
                ),
                (
                    "a valid change with an overflow",
                    lambda: lb.sync([good[0].with_backends([]), third, Service("10.96.0.12", 80), good[1]]),
                    CapacityError,
                ),
                # Cgroups.
                ("cgroup missing", lambda: lb.attach("/nonexistent/cgroup"), NotCgroupV2Error),
                ("cgroup plain dir", lambda: lb.attach(plain_dir), NotCgroupV2Error),
                ("cgroup /proc", lambda: lb.attach("/proc"), NotCgroupV2Error),
                ("cgroup file", lambda: lb.attach(cg_file), NotCgroupV2Error),
                *(("cgroup v1", lambda: lb.attach(v1[0]), NotCgroupV2Error) for _ in v1[:1]),
                ("duplicate attach", lambda: lb.attach(world.client.cgroup), InvalidValueError),
                ("duplicate attach, other spelling", lambda: lb.attach(world.client.cgroup + "/"), InvalidValueError),
                (
                    "duplicate attach, relative",
                    lambda: lb.attach(os.path.relpath(world.client.cgroup)),
                    InvalidValueError,
                ),
            ]
            for what, call, exc in cases:
                with pytest.raises(exc):
                    call()
                assert _everything(lb, pin_dir, world) == before, f"{what} changed the state"
        # Still serving as before.
        r = probe(world.client, [(VIP4, 80, 20), (VIP6, 80, 5), ("10.96.0.11", 80, 2)])
        assert r[0]["errors"] == [] and set(r[0]["served"]) == {"b1", "b2"}, r[0]
        assert r[1]["errors"] == [] and set(r[1]["served"]) == {"b3"}, r[1]
        assert len(r[2]["errors"]) == 2 and set(r[2]["errors"]) <= {"ENETUNREACH", "EHOSTUNREACH"}, r[2]
        # And the same holds after an adopt.
        small.close()
        lb = Balancer.open(pin_dir)
        small = lb
        assert lb.services() and by_key(lb.services()) == by_key(good)
        adopted_before = _everything(lb, pin_dir, world)
        for what, call, exc in cases:
            if what.startswith("cgroup plain"):
                continue  # its directory is gone
            with pytest.raises(exc):
                call()
            assert _everything(lb, pin_dir, world) == adopted_before, f"{what} changed the adopted state"
    finally:
        small.destroy()


def test_replacing_within_capacity_succeeds() -> None:
    """Limits bound the programmed state, not the way to the next one: a change
    whose result fits must not fail because the old and new entries briefly
    coexist (an update writes new backends and services before it deletes the
    old ones).  Nothing is attached: no traffic."""
    require_root()
    a = [Backend("10.244.200.1", 80), Backend("10.244.200.2", 80)]
    b = [Backend("10.244.200.3", 80), Backend("10.244.200.4", 80)]
    with Balancer(max_services=2, max_backends=2) as lb:
        lb.upsert(Service("10.96.0.10", 80, "tcp", a))
        # Every backend of a full balancer replaced in one upsert.
        lb.upsert(Service("10.96.0.10", 80, "tcp", b))
        assert lb.services() == [Service("10.96.0.10", 80, "tcp", b)]
    with Balancer(max_services=2, max_backends=8) as lb:
        lb.sync([Service("10.96.0.10", 80), Service("10.96.0.11", 80)])
        # Every service of a full balancer replaced in one sync.
        r = lb.sync([Service("10.96.0.12", 80), Service("10.96.0.13", 80)])
        assert len(r.added) == 2 and len(r.removed) == 2
        assert [s.address for s in lb.services()] == ["10.96.0.12", "10.96.0.13"]
    with Balancer(max_services=4, max_backends=4, maglev_size=251, max_maglev_services=1) as lb:
        lb.upsert(Service("10.96.0.10", 80, "tcp", a, "maglev"))
        lb.sync([Service("10.96.0.11", 80, "tcp", b, "maglev")])
        assert [s.address for s in lb.services()] == ["10.96.0.11"]
