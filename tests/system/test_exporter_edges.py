"""The exporter's edges (issue 22, defect 6): it binds 127.0.0.1 unless told
otherwise (so does the agent's /healthz by default), a scrape whose read fails
(the pin directory removed under it) is ``socklb_up 0`` and never an HTTP 500,
and idle or slow connections time out with a bounded number served at once.
Real sockets, to 127.0.0.1 only."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Iterator, List

import pytest
from helpers import child_env
from pinned import pinned_dir

from socklb import Backend, Balancer, Service
from socklb.datapath import pins


@pytest.fixture
def pd() -> Iterator[str]:
    with pinned_dir() as d:
        with Balancer(pin_dir=d) as lb:
            lb.upsert(Service("10.96.10.1", 80, "tcp", [Backend("10.244.10.1", 8080)]))
        yield d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, timeout: float = 10) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        assert r.status == 200
        return str(r.read().decode())


def listening_on(port: int) -> List[str]:
    """The local addresses (hex, as /proc/net/tcp gives them) listening on ``port``."""
    out = []
    with open("/proc/net/tcp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            addr, p = parts[1].split(":")
            if parts[3] == "0A" and int(p, 16) == port:
                out.append(addr)
    return out


def test_exporter_binds_loopback_by_default(pd: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "socklb.cli", "exporter", "--pin-dir", pd, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (
            line,
            proc.stderr.read() if proc.poll() is not None and proc.stderr else "",
        )
        assert "socklb_up 1.0" in scrape(port)
        assert listening_on(port) == ["0100007F"]
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_agent_healthz_binds_loopback_by_default() -> None:
    from socklb.cli import parser

    args = parser().parse_args(["kubernetes", "--cgroup", "/sys/fs/cgroup/x", "--node-name", "n"])
    assert args.healthz_address == "127.0.0.1"


def test_a_failed_read_is_up_0_not_a_500(pd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from socklb.ops.metrics import start_http_server

    port = free_port()
    server, _ = start_http_server(pd, port, "127.0.0.1")
    try:
        assert "socklb_up 1.0" in scrape(port)

        def gone(path: str) -> None:
            raise FileNotFoundError(2, "No such file or directory", path)

        # What a scrape racing the removal of the pin directory meets.
        monkeypatch.setattr(pins, "holder_pid", gone)
        assert "socklb_up 0.0" in scrape(port)
        monkeypatch.undo()
        # The real race: the directory destroyed and made again under the scrapes.
        stop = threading.Event()

        def churn() -> None:
            while not stop.is_set():
                Balancer.open(pd).destroy()
                with Balancer(pin_dir=pd) as lb:
                    lb.upsert(Service("10.96.10.1", 80, "tcp", [Backend("10.244.10.1", 8080)]))

        t = threading.Thread(target=churn)
        t.start()
        try:
            ups = [("socklb_up 1.0" in scrape(port)) for _ in range(150)]  # every one an HTTP 200
        finally:
            stop.set()
            t.join(60)
        assert len(ups) == 150
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_idle_connections_time_out_and_are_bounded(pd: str) -> None:
    from socklb.ops.metrics import start_http_server

    port = free_port()
    base = threading.active_count()
    server, _ = start_http_server(pd, port, "127.0.0.1")
    idle: List[socket.socket] = []
    try:
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow.sendall(b"GET /metr")  # half a request line, then nothing
        time.sleep(1.0)
        held = threading.active_count() - base - 1  # minus the server's own thread
        assert held <= 16, f"{held} threads for 101 idle connections"
        # Within the idle timeout (10 s) and some slack they are all closed ...
        t0 = time.monotonic()
        assert slow.recv(1) == b""
        assert time.monotonic() - t0 < 20
        deadline = time.monotonic() + 20
        while threading.active_count() > base + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert threading.active_count() <= base + 1
        slow.close()
        # ... and a scrape is served again.
        assert "socklb_up 1.0" in scrape(port)
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()
