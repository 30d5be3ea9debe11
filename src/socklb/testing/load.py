"""Continuous connections from a lab pod, read as they are made: the load
under which examples and tests change a service and count what failed.

    python -m socklb.testing.load 10.96.0.10 80 --max-n 20000 --max-seconds 30 --pause 0.001

The process prints ``ready``, then one line per TCP connection: its start
time, the time it was connected (or failed), both from ``CLOCK_MONOTONIC``,
which every process of the machine shares whatever its namespace, and who
answered (the :mod:`socklb.testing.server` name) or ``error:ERRNO``.  It stops on
SIGTERM (the connection under way finishes), after ``--max-n`` connections or
``--max-seconds``, whichever comes first, so the load is always bounded.

:class:`Load` runs it in a pod and keeps what it reports::

    >>> with Load(pod, "10.96.0.10", 80, max_n=2000, max_seconds=10) as load:  # doctest: +SKIP
    ...     begin = time.monotonic(); lb.upsert(new_version)
    ...     end = load.hold(begin, seconds=0.5)
    >>> load.between(begin, end)                                                  # doctest: +SKIP
    Counter({'v2-0': 61, 'v2-1': 57})
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, List, NamedTuple, Optional, Sequence

from typing_extensions import Self

from socklb.testing.client import _err, _family, _readline

__all__ = ["Connection", "Load", "main"]


class Connection(NamedTuple):
    """One connection the load made."""

    start: float
    """When ``connect()`` was called (``time.monotonic()``)."""
    connected: float
    """When it was connected, or failed."""
    who: str
    """The server's name, or ``error:ERRNO`` (``error:EOF`` when it answered nothing)."""

    @property
    def failed(self) -> bool:
        return self.who.startswith("error:")


def _dial(host: str, port: int, timeout: float) -> Connection:
    t0 = time.monotonic()
    s = socket.socket(_family(host))
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        t1 = time.monotonic()
        s.sendall(b"peer\n")
        data = _readline(s)
        who = data.decode(errors="replace").split()[0] if data.strip() else "error:EOF"
    except OSError as e:
        t1 = time.monotonic()
        who = "error:" + _err(e)
    finally:
        s.close()
    return Connection(t0, t1, who)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The load itself (run in a pod); see the module's docstring."""
    ap = argparse.ArgumentParser(prog="python -m socklb.testing.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--max-n", type=int, default=10000, help="connections at most (default 10,000)")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="seconds at most (default 30)")
    ap.add_argument("--pause", type=float, default=0.001, help="seconds between connections (default 0.001)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds per connection (default 3)")
    a = ap.parse_args(argv)
    stop: List[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    end = time.monotonic() + a.max_seconds
    print("ready", flush=True)
    n = 0
    while not stop and n < a.max_n and time.monotonic() < end:
        n += 1
        c = _dial(a.host, a.port, a.timeout)
        print(f"{c.start:.6f} {c.connected:.6f} {c.who}", flush=True)
        if a.pause > 0:
            time.sleep(a.pause)
    return 0


class Load:
    """:func:`main` running in ``pod`` (a :class:`socklb.testing.lab.Pod`), its
    connections read as they are made.  Thread-safe; a context manager that
    stops the load on exit."""

    def __init__(
        self,
        pod: Any,
        host: str,
        port: int,
        max_n: int,
        max_seconds: float,
        pause: float = 0.001,
        timeout: float = 3.0,
    ) -> None:
        argv = [sys.executable, "-m", "socklb.testing.load", host, str(port), "--max-n", str(max_n)]
        argv += ["--max-seconds", str(max_seconds), "--pause", str(pause), "--timeout", str(timeout)]
        self.proc: subprocess.Popen[str] = pod.popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"socklb.testing.load did not start in {getattr(pod, 'name', pod)}: {first!r}")
        self._log: List[Connection] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="socklb-labload", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t0, t1, who = line.split()
            with self._lock:
                self._log.append(Connection(float(t0), float(t1), who))

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def connections(self) -> List[Connection]:
        """Every connection reported so far, in order."""
        with self._lock:
            return list(self._log)

    def since(self, t0: float) -> List[Connection]:
        """The connections that started at ``t0`` or later."""
        with self._lock:
            return [c for c in self._log if c.start >= t0]

    def between(self, begin: float, end: float) -> Counter[str]:
        """Who served the connections that started and were connected in [begin, end]."""
        with self._lock:
            return Counter(c.who for c in self._log if begin <= c.start and c.connected <= end)

    def hold(self, begin: float, seconds: float, at_least: int = 50, limit: float = 10.0) -> float:
        """Wait until ``seconds`` have passed since ``begin`` and ``at_least``
        connections were made since then (at most ``limit`` seconds, or until
        the load ends); returns the time it ends."""
        while True:
            now = time.monotonic()
            enough = now - begin >= seconds and sum(self.between(begin, now).values()) >= at_least
            if enough or now - begin >= limit or not self.running:
                return now
            time.sleep(0.02)

    def stop(self) -> List[Connection]:
        """Stop the load (SIGTERM: the connection under way finishes); every connection made."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        return self.connections()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
