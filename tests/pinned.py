"""Shared helpers of the pinned-state tests (tests/datapath/test_pins.py,
test_pin_safety.py, test_against_a_model.py, tests/system/...): pin directories
that are always removed, a process that holds a pinned balancer, a continuous
connect loop run in a lab pod, a many-target prober and raw readers of pinned
maps.  The child programs are in tests/programs/."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from helpers import PROGRAMS, child_env, in_ci, raw_map, require_root

from socklb import Balancer, Service
from socklb._native.abi import BACKEND_VAL, META, SLOT_KEY, SLOT_VAL, SVC_KEY, SVC_VAL, U32

UNREACHABLE = {"ENETUNREACH", "EHOSTUNREACH"}
PIN_ROOT = "/sys/fs/bpf"
PIN_PREFIX = PIN_ROOT + "/socklb-test-"


def new_pin_dir() -> str:
    """A pin directory path unique to one test (not created)."""
    return f"{PIN_PREFIX}{uuid.uuid4().hex}"


def remove_pins(pd: str) -> None:
    """Remove everything pinned in ``pd``: adopt and destroy if possible (that
    detaches the links), else unpin by removing the directory."""
    assert pd.startswith(PIN_PREFIX), pd  # never anything but a test's own directory
    if not os.path.lexists(pd):
        return
    try:
        Balancer.open(pd).destroy()
    except Exception:
        pass
    shutil.rmtree(pd, ignore_errors=True)


@contextlib.contextmanager
def pinned_dir() -> Iterator[str]:
    """A unique pin directory below /sys/fs/bpf, removed at the end even on failure."""
    require_root()
    pd = new_pin_dir()
    try:
        yield pd
    finally:
        remove_pins(pd)
        assert not os.path.lexists(pd), f"{pd} was left behind"


def bpftool() -> str:
    found = shutil.which("bpftool") or shutil.which("bpftool", path="/usr/sbin:/sbin:/usr/bin")
    if found is None:
        if in_ci():
            pytest.fail("bpftool is needed (./run setup installs it); CI=true forbids skipping")
        pytest.skip("needs bpftool")
    return found


def svc_to_json(s: Service) -> Dict[str, Any]:
    return {
        "address": s.address,
        "port": s.port,
        "protocol": s.protocol.value,
        "backends": [[b.address, b.port, b.weight, b.state.value] for b in s.backends],
        "algorithm": s.algorithm.value,
        "affinity": s.affinity.timeout if s.affinity else None,
        "terminate_tcp": s.terminate_tcp,
    }


@contextlib.contextmanager
def holder(
    pd: str, services: Sequence[Service] = (), cgroup: Optional[str] = None, then: str = "sleep"
) -> Iterator[subprocess.Popen[str]]:
    """A separate process that owns a pinned balancer in ``pd``; killed at the end."""
    spec = {"pin_dir": pd, "services": [svc_to_json(s) for s in services], "cgroup": cgroup, "then": then}
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAMS / "holder.py"), json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"holder did not become ready: {line!r} {err}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdin is not None and proc.stdin.closed:
            proc.stdin = None
        proc.communicate(timeout=30)


class LoadLoop:
    """``procs`` continuous connect loops to ``host:port`` in ``pod``, until
    :meth:`finish`.  Bounded: at most ``max_n`` connections and ``max_seconds``
    each.  Use as a context manager (the processes are killed at the end)."""

    def __init__(
        self,
        pod: Any,
        host: str,
        port: int,
        tmp: Path,
        procs: int = 1,
        max_n: int = 500_000,
        max_seconds: float = 90.0,
    ) -> None:
        self.stop = tmp / f"stop-{uuid.uuid4().hex}"
        self.procs: List[subprocess.Popen[str]] = []
        try:
            for _ in range(procs):
                p = pod.popen(
                    [
                        sys.executable,
                        "-I",
                        str(PROGRAMS / "load_loop.py"),
                        host,
                        str(port),
                        str(self.stop),
                        str(max_n),
                        str(max_seconds),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                self.procs.append(p)
            for p in self.procs:
                assert p.stdout is not None
                line = p.stdout.readline()
                assert line.strip() == "started", f"load loop did not start: {line!r}"
        except BaseException:
            self.kill()
            raise

    def finish(self, timeout: float = 60) -> Dict[str, Any]:
        """Stop the loops and return their summed results."""
        self.stop.touch()
        total: Dict[str, Any] = {
            "attempted": 0,
            "failed": 0,
            "errors": Counter(),
            "served": Counter(),
            "stopped_by": [],
            "rate": 0.0,
        }
        for p in self.procs:
            out, err = p.communicate(timeout=timeout)
            lines = out.strip().splitlines()
            assert p.returncode == 0 and lines, f"load loop failed: {err}"
            r = json.loads(lines[-1])
            total["attempted"] += r["attempted"]
            total["failed"] += r["failed"]
            total["errors"].update(r["errors"])
            total["served"].update(r["served"])
            total["stopped_by"].append(r["stopped_by"])
            total["rate"] += r["attempted"] / max(r["seconds"], 1e-9)
        return total

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass

    def __enter__(self) -> LoadLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def probe(pod: Any, targets: Sequence[Tuple[str, int, int]], timeout: float = 120) -> List[Dict[str, List[str]]]:
    """Dial every (host, port, n) from ``pod``; one result per target."""
    out = pod.run(
        [sys.executable, "-I", str(PROGRAMS / "probe.py"), json.dumps([list(t) for t in targets])], timeout=timeout
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


_libbpf: Optional[ctypes.CDLL] = None


def _bpf() -> ctypes.CDLL:
    global _libbpf
    if _libbpf is None:
        _libbpf = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
        _libbpf.bpf_obj_get.argtypes = [ctypes.c_char_p]
        _libbpf.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    return _libbpf


def obj_get(path: str) -> int:
    """An fd of a pinned BPF object, without any socklb ownership."""
    fd = int(_bpf().bpf_obj_get(os.fsencode(path)))
    if fd < 0:
        err = ctypes.get_errno() or -fd
        raise OSError(err, f"bpf_obj_get {path}: {os.strerror(err)}")
    return fd


def prog_exists(prog_id: int) -> bool:
    fd = int(_bpf().bpf_prog_get_fd_by_id(prog_id))
    if fd >= 0:
        os.close(fd)
        return True
    return False


_MAPS = {
    "services": (SVC_KEY.size, SVC_VAL.size),
    "slots": (SLOT_KEY.size, SLOT_VAL.size),
    "backends": (U32.size, BACKEND_VAL.size),
    "meta": (U32.size, META.size),
}


def read_pinned(pd: str, name: str, cap: int = 1 << 20, value_size: Optional[int] = None) -> Dict[bytes, bytes]:
    """The raw contents of the pinned map ``name`` of ``pd`` (read directly, as
    another tool would, without taking the owner lock)."""
    ksz, vsz = _MAPS.get(name, (U32.size, value_size or 0))
    fd = obj_get(os.path.join(pd, "maps", name))
    try:
        m = raw_map(fd, name, ksz, value_size or vsz)
        return {k: v for k in m.keys(cap) if (v := m.lookup(k)) is not None}
    finally:
        os.close(fd)


def write_meta(pd: str, magic: int, version: int, limits: Sequence[int]) -> None:
    fd = obj_get(os.path.join(pd, "maps", "meta"))
    try:
        rec = dict(zip(META.fields, (magic, version, *limits)))
        raw_map(fd, "meta", U32.size, META.size).update(U32.pack(0), META.pack(**rec), 1)
    finally:
        os.close(fd)


def tree(pd: str) -> Dict[str, int]:
    """Every path below ``pd`` (and ``pd``) with its mode."""
    out = {pd: os.lstat(pd).st_mode}
    for root, dirs, files in os.walk(pd):
        for n in dirs + files:
            p = os.path.join(root, n)
            out[p] = os.lstat(p).st_mode
    return out


def attached_programs(root: str) -> Dict[str, List[Tuple[int, str]]]:
    """(program id, name) attached directly to each cgroup below ``root``, from bpftool."""
    r = subprocess.run([bpftool(), "-j", "cgroup", "tree", root], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out: Dict[str, List[Tuple[int, str]]] = {}
    for entry in json.loads(r.stdout or "[]"):
        progs = [(int(p["id"]), str(p.get("name", ""))) for p in entry.get("programs", [])]
        if progs:
            out[os.path.realpath(entry["cgroup"])] = progs
    return out


def by_key(services: Sequence[Service]) -> List[Service]:
    return sorted(services, key=lambda s: (s.protocol.value, s.ip.version, s.ip.packed, s.port))
