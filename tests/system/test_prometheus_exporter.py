"""socklb.ops.metrics and ``socklb exporter``: scraped by a REAL Prometheus server
(Debian's ``prometheus``, started here on 127.0.0.1) whose HTTP API is then
queried for the socklb_* series; ``promtool check metrics`` is clean.  The
balancer is owned by another process (pinned) or embedded
(``start_http_server``).  Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any, Dict, Iterator, List

import pytest
from helpers import TCP_PORT, VIP4, World, child_env, dial, in_ci, one_line_error, require_root, socklb_cli
from pinned import holder, pinned_dir

from socklb import Backend, BackendState, Service

EXPORTER = [sys.executable, "-m", "socklb.cli", "exporter"]


def need(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        if in_ci():
            pytest.fail(f"{binary} is needed (./run setup installs Debian's prometheus); CI=true forbids skipping")
        pytest.skip(f"needs {binary} (Debian package prometheus)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def promtool_check(text: str) -> None:
    r = subprocess.run([need("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.stdout, r.stderr)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, q: str) -> List[Dict[str, Any]]:
        body = json.loads(get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": q})))
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def wait_for(self, q: str, n: int = 1, timeout: float = 45) -> List[Dict[str, Any]]:
        """The result of ``q`` once it has at least ``n`` series (bounded wait)."""
        end = time.monotonic() + timeout
        while True:
            res = self.query(q)
            if len(res) >= n or time.monotonic() > end:
                return res
            time.sleep(0.5)


@contextlib.contextmanager
def prometheus_server(tmp: str, target: str) -> Iterator[Prometheus]:
    binary = need("prometheus")
    port = free_port()
    cfg = os.path.join(tmp, "prometheus.yml")
    with open(cfg, "w", encoding="utf-8") as f:
        f.write(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: socklb\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
    log = open(os.path.join(tmp, "prometheus.log"), "wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 30
        while True:
            try:
                if "Ready" in get(f"{url}/-/ready", timeout=2):
                    break
            except OSError:
                pass
            assert proc.poll() is None, open(os.path.join(tmp, "prometheus.log")).read()[-2000:]
            assert time.monotonic() < end, "prometheus did not become ready"
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        stop(proc)
        log.close()


def value(res: List[Dict[str, Any]]) -> float:
    assert len(res) == 1, res
    return float(res[0]["value"][1])


def test_exporter_scraped_by_prometheus(world: World, tmp_path: Any) -> None:
    require_root()
    b1, b2, b3 = world.pods("b1", "b2", "b3")
    svcs = [
        Service(VIP4, 80, "tcp", [Backend(b1.ipv4, TCP_PORT), Backend(b2.ipv4, TCP_PORT)]),
        Service("10.96.0.11", 80, "tcp", [Backend(b3.ipv4, TCP_PORT, state=BackendState.TERMINATING)]),
        Service("10.96.0.12", 80, "udp", []),
    ]
    with pinned_dir() as pd, holder(pd, svcs, cgroup=world.client.cgroup):
        got = dial(world.client, "tcp", VIP4, 80, 20)
        assert not got["errors"], got
        port = free_port()
        exporter = subprocess.Popen(
            [*EXPORTER, "--pin-dir", pd, "--port", str(port), "--address", "127.0.0.1", "--per-backend"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        try:
            assert exporter.stdout is not None
            line = exporter.stdout.readline()
            assert "serving" in line, (
                line,
                exporter.stderr.read() if exporter.poll() is not None and exporter.stderr else "",
            )
            text = get(f"http://127.0.0.1:{port}/metrics")
            promtool_check(text)
            assert "socklb_up 1.0" in text
            with prometheus_server(str(tmp_path), f"127.0.0.1:{port}") as p:
                assert value(p.wait_for('up{job="socklb"} == 1')) == 1
                assert value(p.wait_for('socklb_translations_total{hook="connect",family="ipv4"}')) == 20
                assert value(p.query('socklb_refusals_total{reason="no_backend"}')) == 0
                assert value(p.query("socklb_up")) == 1
                svc = {
                    (r["metric"]["protocol"], r["metric"]["algorithm"]): float(r["value"][1])
                    for r in p.query("socklb_services")
                }
                assert svc == {("tcp", "random"): 2, ("udp", "random"): 1}
                states = {r["metric"]["state"]: float(r["value"][1]) for r in p.query("socklb_backends")}
                assert states["active"] == 2 and states["terminating"] == 1 and states["quarantined"] == 0
                assert value(p.query('socklb_map_entries{map="services"}')) == 3
                assert value(p.query('socklb_map_capacity{map="services"}')) == 2 * 65536
                assert value(p.query("socklb_attachments")) == 1
                sel = {
                    r["metric"]["backend"]: float(r["value"][1])
                    for r in p.query('socklb_backend_selections_total{service="10.96.0.10:80/tcp"}')
                }
                names = {b1.ipv4: "b1", b2.ipv4: "b2"}
                assert {names[k.split(":")[0]]: v for k, v in sel.items() if v} == dict(Counter(got["served"]))
                names_seen = {r["metric"]["__name__"] for r in p.query('{__name__=~"socklb_.*"}')}
                assert {"socklb_translations_total", "socklb_owner_pid", "socklb_retries_total"} <= names_seen
        finally:
            stop(exporter)
        assert exporter.returncode == 0, exporter.stderr.read() if exporter.stderr else ""


def test_embedded_start_http_server(world: World) -> None:
    require_root()
    from prometheus_client.parser import text_string_to_metric_families

    from socklb import Balancer
    from socklb.ops.metrics import start_http_server

    b1 = world.backends["b1"]
    with Balancer(max_services=8, max_backends=16) as lb:
        lb.sync([Service(VIP4, 80, "tcp", [Backend(b1.ipv4, TCP_PORT)])])
        with lb.attach(world.client.cgroup):
            dial(world.client, "tcp", VIP4, 80, 3)
            port = free_port()
            server, thread = start_http_server(lb, port, "127.0.0.1", per_backend=True)
            try:
                text = get(f"http://127.0.0.1:{port}/metrics")
            finally:
                server.shutdown()
                server.server_close()
                thread.join(10)
    promtool_check(text)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    hist = fams["socklb_update_duration_seconds"]
    count = [s.value for s in hist.samples if s.name.endswith("_count")]
    assert count == [1.0]
    assert fams["socklb_last_successful_update_timestamp_seconds"].samples[0].value > time.time() - 600
    tr = {
        (s.labels["hook"], s.labels["family"]): s.value
        for s in fams["socklb_translations"].samples
        if s.name.endswith("_total")
    }
    assert tr[("connect", "ipv4")] == 3 and tr[("connect", "ipv6")] == 0
    sel = [s.value for s in fams["socklb_backend_selections"].samples if s.name.endswith("_total")]
    assert sel == [3.0]
    assert fams["socklb_map_capacity"].samples[0].value > 0


def test_exporter_bad_input(tmp_path: Any) -> None:
    for argv in (
        ["--pin-dir", str(tmp_path), "--port", "1"],
        ["--pin-dir", "/sys/fs/bpf/socklb-test-nope-" + os.urandom(4).hex(), "--port", str(free_port())],
        ["--pin-dir", str(tmp_path), "--port", "70000"],
    ):
        one_line_error(socklb_cli("exporter", *argv))
