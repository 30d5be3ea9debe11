"""socklb trace: events of the pinned trace ring buffer match real connects one
to one (count, pid, cgroup, VIP, backend, outcome); the lease turns tracing
off when the reader is killed; bad input is one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

from helpers import TCP_PORT, UDP_PORT, VIP4, World, child_env, dial, one_line_error, program, require_root, socklb_cli
from helpers import refused as refused_errno
from pinned import holder, pinned_dir

from socklb import Backend, Service
from socklb.ops.trace import LEASE, lease_state

# In the client pod: connect n times to host:port, say which backend served
# each connect (labserver protocol); then n_udp datagrams with sendto().


def start_trace(pd: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "socklb.cli", "trace", "--pin-dir", pd, "-o", "json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "tracing" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> List[Dict[str, Any]]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"trace did not finish: {out} {err}") from None
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_trace_matches_connects(world: World) -> None:
    require_root()
    b = world.backends
    svcs = [
        Service(VIP4, 80, "tcp", [Backend(p.ipv4, TCP_PORT) for p in b.values()]),
        Service("10.96.0.12", 81, "tcp", []),
        Service("10.96.0.53", 53, "udp", [Backend(b["b1"].ipv4, UDP_PORT)]),
    ]
    names = {p.ipv4: n for n, p in b.items()}
    n_tcp, n_refused, n_udp = 12, 2, 3
    with pinned_dir() as pd, holder(pd, svcs, cgroup=world.client.cgroup):
        all_events = start_trace(pd, "--count", str(n_tcp + n_refused + n_udp), "--timeout", "60")
        # one consumer per ring buffer: a second reader is refused
        second = subprocess.run(
            [sys.executable, "-m", "socklb.cli", "trace", "--pin-dir", pd],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
        )
        assert second.returncode != 0 and f"pid {all_events.pid}" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        try:
            run = world.client.run(
                [sys.executable, program("trace_client"), VIP4, "80", str(n_tcp), "10.96.0.53", "53", str(n_udp)]
            )
            fails = world.client.run(
                [sys.executable, program("trace_client"), "10.96.0.12", "81", str(n_refused), "10.96.0.53", "53", "0"]
            )
            client = json.loads(run.stdout)
            failed = json.loads(fails.stdout)
            events = finish(all_events)
            # filters: only the refused frontend, only the client's cgroup
            refused_only = start_trace(pd, "--service", "10.96.0.12:81", "--count", "1", "--timeout", "60")
            world.client.run([sys.executable, program("trace_client"), VIP4, "80", "1", "10.96.0.53", "53", "0"])
            world.client.run(
                [sys.executable, program("trace_client"), "10.96.0.12", "81", "1", "10.96.0.53", "53", "0"]
            )
            refused = finish(refused_only)
            other_cgroup = start_trace(pd, "--cgroup", world.outsider.cgroup, "--timeout", "2")
            world.client.run([sys.executable, program("trace_client"), VIP4, "80", "1", "10.96.0.53", "53", "0"])
            assert finish(other_cgroup) == []
        finally:
            for p in (all_events,):
                if p.poll() is None:
                    p.kill()
                    p.communicate(timeout=10)
        cgid = os.stat(world.client.cgroup).st_ino
        tcp = [e for e in events if e["protocol"] == "tcp" and e["vip"] == VIP4]
        assert len(tcp) == n_tcp, events
        assert [names[e["backend"]] for e in tcp] == client["served"]
        for e in tcp:
            assert (e["hook"], e["pid"], e["cgroup_id"], e["vip_port"], e["backend_port"], e["outcome"]) == (
                "connect4",
                client["pid"],
                cgid,
                80,
                TCP_PORT,
                "translated",
            ), e
            assert e["comm"].startswith("python") and e["netns_cookie"] > 0 and e["socket_cookie"] > 0
            assert abs(e["time"] - time.time()) < 120
        assert len({e["socket_cookie"] for e in tcp}) == n_tcp
        no = [e for e in events if e["vip"] == "10.96.0.12"]
        assert failed["served"] == [f"error:{getattr(errno, refused_errno())}"] * n_refused  # ECONNREFUSED (or EPERM)
        assert [(e["outcome"], e["backend"], e["pid"]) for e in no] == [("no_backend", None, failed["pid"])] * n_refused
        assert [(e["vip"], e["outcome"]) for e in refused] == [("10.96.0.12", "no_backend")]
        udp = [e for e in events if e["protocol"] == "udp"]
        assert [(e["hook"], e["backend"], e["vip_port"], e["pid"]) for e in udp] == [
            ("sendmsg4", b["b1"].ipv4, 53, client["pid"])
        ] * n_udp
        assert len(events) == n_tcp + n_refused + n_udp
        # both readers stopped cleanly: tracing is off at once
        assert lease_state(pd)[0] == 0


def test_lease_expires_when_the_reader_is_killed(world: World) -> None:
    require_root()
    svc = Service(VIP4, 80, "tcp", [Backend(world.backends["b1"].ipv4, TCP_PORT)])
    with pinned_dir() as pd, holder(pd, [svc], cgroup=world.client.cgroup):
        assert lease_state(pd)[0] == 0  # off until someone reads
        reader = start_trace(pd)
        try:
            # The reader holds the lease: it renews it every LEASE / 4, so even when this machine
            # is so loaded that more than LEASE passed since the last renewal (and it lapsed), the
            # next one comes soon; never further ahead than LEASE.
            deadline = time.monotonic() + 10
            lease, now = lease_state(pd)
            while not now < lease and time.monotonic() < deadline:
                time.sleep(0.05)
                lease, now = lease_state(pd)
            assert now < lease <= now + int(LEASE * 1e9), (lease, now)
            reader.send_signal(signal.SIGKILL)
            reader.communicate(timeout=10)
        finally:
            if reader.poll() is None:
                reader.kill()
        # Its last renewal was before the kill, so the lease ends at most LEASE after it
        # (however loaded the machine: the reader is dead, nothing writes it any more).
        time.sleep(LEASE + 0.5)
        lease, now = lease_state(pd)
        # the lease of a killed reader has run out (0: a translation meanwhile saw it expired)
        assert lease < now, (lease, now)
        # the next translation sees it expired and clears it
        assert dial(world.client, "tcp", VIP4, 80, 1)["served"] == ["b1"]
        assert lease_state(pd)[0] == 0
        # a reader stopped by SIGTERM clears it at once
        reader = start_trace(pd)
        reader.terminate()
        assert finish(reader) == []
        assert lease_state(pd)[0] == 0


def test_trace_bad_input(tmp_path: Any) -> None:
    require_root()
    for argv in (
        ["--pin-dir", str(tmp_path)],
        ["--pin-dir", "/sys/fs/bpf/socklb-test-nope-" + os.urandom(4).hex()],
        ["--pin-dir", str(tmp_path), "--service", "10.96.0.10:x"],
        ["--pin-dir", str(tmp_path), "--count", "0"],
    ):
        one_line_error(socklb_cli("trace", *argv))
