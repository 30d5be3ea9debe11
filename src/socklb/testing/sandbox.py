"""The processes of a lab: :class:`Sandbox` (a network namespace plus a cgroup;
what it starts runs in both), and its kinds :class:`Node` and :class:`Pod`.
See :mod:`socklb.testing.lab`."""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol

from socklb.datapath import cgroup as _cg
from socklb.testing.errors import LabError
from socklb.testing.netns import _READY_TIMEOUT, _WRAPPER, _netns_path, _nsenter

__all__ = ["Node", "Pod", "Sandbox"]

_POD_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")


class _Lab(Protocol):
    """What a sandbox asks of its :class:`~socklb.testing.lab.Lab` (which
    imports this module): that it is open, and to reap what it starts."""

    def _check_open(self) -> None: ...

    def _track(self, proc: subprocess.Popen[Any]) -> None: ...

    def _own_pipes(self, proc: subprocess.Popen[Any]) -> None: ...


def _which(cmd: str, env: Optional[Mapping[str, str]], cwd: Optional[str] = None) -> Optional[str]:
    if "/" in cmd:
        path = os.path.join(os.fspath(cwd), cmd) if cwd is not None else cmd
        return cmd if os.access(path, os.X_OK) else None
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    return shutil.which(cmd, path=path)


class Sandbox:
    """A network namespace plus a cgroup; processes started here run in both.

    The base of :class:`Node` and :class:`Pod`; do not create one directly.

    Example::

        >>> r = lab.node.run(["ip", "-br", "addr"])      # doctest: +SKIP
        >>> print(r.stdout)                              # doctest: +SKIP
    """

    def __init__(self, lab: _Lab, name: str, netns: str, cgroup: str) -> None:
        self._lab = lab
        #: Name of the pod (``"node"`` for the node).
        self.name: str = name
        #: Name of the network namespace (``/run/netns/<netns>``).
        self.netns: str = netns
        #: Absolute path of the cgroup v2 directory.
        self.cgroup: str = cgroup
        self._cgroup_rel_cache: Optional[str] = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} netns={self.netns}>"

    @property
    def netns_path(self) -> str:
        """The bind-mounted namespace file, e.g. ``/run/netns/slb-1a2b3c-pod-b1``."""
        return _netns_path(self.netns)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this namespace and cgroup; keyword arguments go to :class:`subprocess.Popen`.

        The process joins the cgroup before it executes ``argv``, so every socket
        it creates is subject to programs attached to the cgroup; when popen
        returns, it is in the cgroup (or already exited).  The returned ``pid``
        is the process's own (a shell and ``nsenter`` exec into it).  Processes
        still running when the lab closes are killed.

        Example::

            >>> p = pod.popen(["sleep", "30"])           # doctest: +SKIP
            >>> p.terminate(); p.wait()                  # doctest: +SKIP
            -15
        """
        self._lab._check_open()
        if isinstance(argv, (str, bytes)) or not argv:
            raise LabError("popen: argv must be a non-empty sequence of strings")
        for bad in ("shell", "executable"):
            if kwargs.get(bad):
                raise LabError(f"popen: {bad}= is not supported")
        kwargs.pop("shell", None)
        kwargs.pop("executable", None)
        env = kwargs.get("env")
        if _which(argv[0], env, kwargs.get("cwd")) is None:
            raise LabError(f"{argv[0]}: command not found")
        wrapped = [
            "/bin/sh",
            "-c",
            _WRAPPER,
            os.path.join(self.cgroup, "cgroup.procs"),
            _nsenter(),
            f"--net={self.netns_path}",
            "--",
            *argv,
        ]
        try:
            proc: subprocess.Popen[Any] = subprocess.Popen(wrapped, **kwargs)
        except OSError as e:
            raise LabError(f"cannot start {argv[0]} in {self.netns}: {e}") from e
        self._lab._track(proc)
        # Return only once the process is in the cgroup (or has already failed).
        want = self._cgroup_rel()
        deadline = time.monotonic() + _READY_TIMEOUT
        delay = 0.0002
        while _cg.pid_cgroup(proc.pid) != want and proc.poll() is None:
            if time.monotonic() >= deadline:
                proc.kill()
                proc.wait()
                raise LabError(f"{_show(argv)} did not join cgroup {self.cgroup} within {_READY_TIMEOUT:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        return proc

    def _cgroup_rel(self) -> str:
        if self._cgroup_rel_cache is None:
            self._cgroup_rel_cache = "/" + os.path.relpath(self.cgroup, _cg.cgroup2_mount())
        return self._cgroup_rel_cache

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30,
        check: bool = True,
        input: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion here and return its output (text mode).

        Raises :class:`~socklb.testing.LabError`, including the standard error
        output, when it exits with a non-zero status (if ``check``) or runs
        longer than ``timeout`` seconds (it is killed then).

        Example::

            >>> client.run(["ip", "route"]).stdout       # doctest: +SKIP
            'default via 10.244.1.1 dev eth0 \\n10.244.1.0/24 dev eth0 ...'
        """
        proc = self.popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                out, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # a grandchild holds the pipes
                out, err = "", ""
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
                proc.wait(5)
            raise LabError(
                f"{_show(argv)} in {self.netns} timed out after {timeout:g}s; stderr: {err.strip()!r}"
            ) from None
        if check and proc.returncode != 0:
            raise LabError(
                f"{_show(argv)} in {self.netns} exited with status {proc.returncode}; stderr: {err.strip()!r}"
            )
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def python(self, code: str, *args: str, timeout: float = 60) -> str:
        """Run ``python -c code args...`` here (same interpreter) and return its stdout.

        Raises :class:`~socklb.testing.LabError` with the stderr output when it fails.

        Example::

            >>> pod.python("import sys; print(sys.argv[1])", "hi")   # doctest: +SKIP
            'hi\\n'
        """
        return self.run([sys.executable, "-c", code, *args], timeout=timeout).stdout

    def serve(
        self,
        name: Optional[str] = None,
        tcp: Sequence[int] = (),
        udp: Sequence[int] = (),
        wait: float = 0.25,
        ready_timeout: float = _READY_TIMEOUT,
    ) -> subprocess.Popen[str]:
        """Start :mod:`socklb.testing.server` here, answering with ``name`` (default: this pod's name).

        Returns once the server listens on every port (it printed ``ready``);
        raises :class:`~socklb.testing.LabError` if it does not within
        ``ready_timeout`` seconds.  Stop it with ``terminate()``; the lab
        kills it on close otherwise.  ``wait`` is the server's ``--wait``.

        Example::

            >>> srv = b1.serve(tcp=[8080], udp=[8080])   # doctest: +SKIP
            >>> srv.terminate(); srv.wait()             # doctest: +SKIP
            0
        """
        if not tcp and not udp:
            raise LabError("serve: give at least one TCP or UDP port")
        server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
        argv = [sys.executable, "-I", server, "--name", self.name if name is None else name, "--wait", repr(wait)]
        for port in tcp:
            argv += ["--tcp", str(int(port))]
        for port in udp:
            argv += ["--udp", str(int(port))]
        proc: subprocess.Popen[str] = self.popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._lab._own_pipes(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + ready_timeout
        line = ""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
            if readable:
                line = proc.stdout.readline()
                if line.strip() == "ready" or not line:
                    break
            elif proc.poll() is not None:
                break
        if line.strip() == "ready":
            return proc
        status = proc.poll()
        proc.kill()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            err = ""
        what = f"did not become ready within {ready_timeout:g}s" if status is None else f"exited with status {status}"
        raise LabError(
            f"labserver in {self.netns} {what} (tcp={list(tcp)}, udp={list(udp)}); stderr: {(err or '').strip()!r}"
        )


def _show(argv: Sequence[str]) -> str:
    text = " ".join(argv)
    return text if len(text) <= 120 else text[:117] + "..."


class Node(Sandbox):
    """The lab's node: the namespace that routes between pods.

    It has one ``veth<i>`` per pod and ``unreachable`` routes for the service
    ranges; IPv4 and IPv6 forwarding are on.

    Example::

        >>> lab.node.run(["ip", "route"]).stdout         # doctest: +SKIP
    """


class Pod(Sandbox):
    """A pod: a network namespace with ``eth0`` connected to the node, and a cgroup.

    Example::

        >>> b1 = lab.add_pod("b1")                       # doctest: +SKIP
        >>> b1.ipv4, b1.ipv6, b1.gateway4                # doctest: +SKIP
        ('10.244.2.2', 'fd00:244:2::2', '10.244.2.1')
    """

    def __init__(self, lab: _Lab, name: str, netns: str, cgroup: str, index: int) -> None:
        super().__init__(lab, name, netns, cgroup)
        #: 1-based position of the pod in the lab.
        self.index: int = index
        #: The pod's IPv4 address (``10.244.<index>.2``).
        self.ipv4: str = f"10.244.{index}.2"
        #: The pod's IPv6 address (``fd00:244:<index in hex>::2``).
        self.ipv6: str = f"fd00:244:{index:x}::2"
        #: The node's address on this pod's link; the pod's IPv4 default gateway.
        self.gateway4: str = f"10.244.{index}.1"
        #: The node's IPv6 address on this pod's link; the pod's IPv6 default gateway.
        self.gateway6: str = f"fd00:244:{index:x}::1"
        #: The pod's interface name.
        self.ifname: str = "eth0"
        #: The name of the node's end of the pod's veth pair.
        self.node_ifname: str = f"veth{index}"
        self._siblings: dict[str, Sandbox] = {}
        self._siblings_lock = threading.Lock()

    def sibling(self, name: str) -> Sandbox:
        """The pod's network namespace with another cgroup, ``<lab>/<pod>.<name>``:
        a process started there talks from the pod's address, but programs
        attached to the pod's cgroup do not see its sockets (the cgroup is a
        sibling, not a child).  Made on first use, the same object after; the
        lab removes it with the rest.  ``name`` follows the pod-name rules.

        Example::

            >>> bare = client.sibling("bare")             # doctest: +SKIP
            >>> bare.run(["curl", "-s", "10.244.2.2:8080"])  # doctest: +SKIP
        """
        self._lab._check_open()
        if not isinstance(name, str) or not _POD_NAME_RE.match(name):
            raise LabError(f"invalid sibling name {name!r}: use 1-41 characters a-z, 0-9 and '-' (not at either end)")
        with self._siblings_lock:
            got = self._siblings.get(name)
            if got is None:
                path = os.path.join(os.path.dirname(self.cgroup), f"{self.name}.{name}")
                got = Sandbox(self._lab, f"{self.name}.{name}", self.netns, _cg.make_cgroup(path))
                self._siblings[name] = got
        return got
