"""Throwaway network namespaces that model a Kubernetes node and its pods.

A :class:`Lab` is a "node" network namespace with one veth pair per
:class:`Pod`; every pod is a network namespace of its own with one interface,
``eth0``, and a default route (IPv4 and IPv6) through the node, which forwards
between pods.  Each pod and the node also get a cgroup v2 directory, and
processes started through :meth:`Sandbox.popen` run in the pod's network
namespace *and* its cgroup - so BPF programs attached to the pod's cgroup see
every socket those processes open.

Nothing is configured in the caller's (host) network namespace: every packet
stays inside namespaces the lab created, and everything is removed again by
:meth:`Lab.close` (also on errors, and by :func:`cleanup_leftovers` after a
crash).

Example::

    from socklb.testing.lab import Lab

    with Lab() as lab:
        client = lab.add_pod("client")
        b1 = lab.add_pod("b1")
        server = b1.serve(tcp=[8080], udp=[8080])      # "b1\\n" to every request
        out = client.python(
            "import socket, sys\\n"
            "s = socket.create_connection((sys.argv[1], 8080), timeout=5)\\n"
            "s.sendall(b'hello\\\\n'); print(s.recv(100).decode().strip())",
            b1.ipv4,
        )
        assert out.strip() == "b1"

Addressing: pod *i* (1-based, in the order added) gets ``10.244.i.2/24`` and
``fd00:244:i::2/64`` (*i* in hex) on ``eth0``; the node side of its veth
(``veth<i>``) has ``10.244.i.1/24`` and ``fd00:244:i::1/64``.  The service
ranges :data:`SERVICE_CIDR4` and :data:`SERVICE_CIDR6` are ``unreachable``
routes on the node and in every pod, so a connection to a service address
that was not translated fails at once (``EHOSTUNREACH``/``ENETUNREACH``, in the
``connect()``/``sendto()`` call itself) and is never forwarded anywhere.  The
node answers with ICMP errors without rate limit (``icmp_ratemask`` cleared).

Naming: a lab has a random 6-hex-digit id; its namespaces are
``slb-<id>-node`` and ``slb-<id>-pod-<name>``, its cgroups
``<cgroup2 mount>/socklb-lab/<id>/node`` and ``.../<id>/<name>``, and while it
is alive it holds an ``flock`` on ``/run/socklb-lab/<id>.lock``, which tells
:func:`cleanup_leftovers` whether its owner is still running.

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), a cgroup v2 mount and ``nsenter``
(util-linux).  Uses no part of socklb's native extension.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import ipaddress
import os
import re
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped,unused-ignore]
from pyroute2 import netns as _pr_netns  # type: ignore[import-untyped,unused-ignore]

from socklb.datapath import cgroup as _cg
from socklb.errors import SocklbError
from socklb.testing.errors import LabError

__all__ = [
    "Lab",
    "Sandbox",
    "Node",
    "Pod",
    "cleanup_leftovers",
    "SERVICE_CIDR4",
    "SERVICE_CIDR6",
    "POD_CIDR4",
    "POD_CIDR6",
    "NETNS_PREFIX",
    "CGROUP_DIR",
    "LOCK_DIR",
]

#: IPv4 service range; an ``unreachable`` route on the node.
SERVICE_CIDR4 = "10.96.0.0/16"
#: IPv6 service range; an ``unreachable`` route on the node.
SERVICE_CIDR6 = "fd00:96::/112"
#: Pod *i* has ``10.244.i.0/24``.
POD_CIDR4 = "10.244.0.0/16"
#: Pod *i* has ``fd00:244:i::/64``.
POD_CIDR6 = "fd00:244::/48"

#: Every lab network namespace is named ``slb-<id>-node`` or ``slb-<id>-pod-<name>``.
NETNS_PREFIX = "slb-"
#: Lab cgroups live in ``<cgroup2 mount>/socklb-lab/<id>/``.
CGROUP_DIR = "socklb-lab"
#: Lock files of live labs: ``/run/socklb-lab/<id>.lock``.
LOCK_DIR = "/run/socklb-lab"

MAX_PODS = 254
_NETNS_DIR: str = str(_pr_netns.NETNS_RUN_DIR)
_ID_RE = re.compile(r"^[0-9a-f]{6}$")
_NETNS_RE = re.compile(r"^slb-([0-9a-f]{6})-(?:node|pod-[a-z0-9][a-z0-9-]*)$")
_POD_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_CLONE_NEWNET = 0x40000000
_IFA_F_NODAD = 0x02
_IFA_F_DADFAILED = 0x08
_IFA_F_TENTATIVE = 0x40
# Every lab timeout is multiplied by this (a slow machine: ./run kernels sets
# it for guests under software emulation).
TIMEOUT_SCALE_ENV = "SOCKLB_LAB_TIMEOUT_SCALE"
_SCALE = max(1.0, float(os.environ.get(TIMEOUT_SCALE_ENV) or 1))
_READY_TIMEOUT = 10.0 * _SCALE
_SETTLE_TIMEOUT = 10.0 * _SCALE
if _SCALE > 1:
    from pyroute2 import config as _pr_config  # type: ignore[import-untyped,unused-ignore]

    _pr_config.default_create_socket_timeout = int(10 * _SCALE)
    _pr_config.default_communicate_timeout = int(2 * _SCALE)

_T = TypeVar("_T")
_libc: Optional[ctypes.CDLL] = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _netns_path(name: str) -> str:
    return os.path.join(_NETNS_DIR, name)


def _check_ours(name: str) -> None:
    """Guard: never touch a namespace that is not a lab namespace."""
    if not _NETNS_RE.match(name):
        raise LabError(f"refusing to operate on network namespace {name!r}: not a lab namespace")


def _in_netns(name: str, fn: Callable[[], _T], timeout: float = 10.0 * _SCALE) -> _T:
    """Run ``fn`` in a new thread that has joined the lab network namespace ``name``.

    The thread checks that it really is in that namespace before calling ``fn``,
    so a failure can never make ``fn`` act on the caller's namespace.
    """
    _check_ours(name)
    path = _netns_path(name)
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                want = os.fstat(fd)
                if _get_libc().setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            have = os.stat("/proc/thread-self/ns/net")
            if (have.st_dev, have.st_ino) != (want.st_dev, want.st_ino):
                raise LabError(f"setns into {name} did not take effect")
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=target, name=f"socklb-lab-{name}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise LabError(f"operation in network namespace {name} did not finish within {timeout:g}s")
    if error:
        raise error[0]
    return result[0]


def _write_sysctls(name: str, values: Mapping[str, str]) -> None:
    """Write ``/proc/sys/<key>`` for each key, from inside the lab namespace ``name``."""

    def write() -> None:
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            try:
                with open(path, "w", encoding="ascii") as f:
                    f.write(value + "\n")  # "\n" alone empties a list-valued sysctl
            except OSError as e:
                raise LabError(f"{name}: cannot set {key}={value!r}: {e.strerror}") from e

    _in_netns(name, write)


def _ipr(name: str) -> Any:
    """An IPRoute socket inside the lab namespace ``name`` (never the caller's)."""
    _check_ours(name)
    # flags=0: fail if the namespace does not exist rather than create it.
    return IPRoute(netns=name, flags=0)


def _create_netns(name: str, created: list[str]) -> None:
    """Create the named namespace; record it in ``created`` unless someone else owns it."""
    _check_ours(name)
    try:
        _pr_netns.create(name)
    except FileExistsError as e:
        raise LabError(f"network namespace {name} already exists (leftover? see cleanup_leftovers())") from e
    except BaseException:
        # The file was created with O_EXCL, so whatever exists now is ours.
        if os.path.lexists(_netns_path(name)):
            created.append(name)
        raise
    created.append(name)


def _remove_netns(name: str) -> bool:
    _check_ours(name)
    if not os.path.lexists(_netns_path(name)):
        return False
    try:
        _pr_netns.remove(name)
    except FileNotFoundError:
        return False
    return True


def _which(cmd: str, env: Optional[Mapping[str, str]], cwd: Optional[str] = None) -> Optional[str]:
    if "/" in cmd:
        path = os.path.join(os.fspath(cwd), cmd) if cwd is not None else cmd
        return cmd if os.access(path, os.X_OK) else None
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    return shutil.which(cmd, path=path)


# The wrapper every lab process starts as: move itself into the cgroup (its pid
# survives the exec), then nsenter joins the network namespace and execs argv.
_WRAPPER = 'echo $$ > "$0" && exec "$@"'
_NSENTER: Optional[str] = None


def _nsenter() -> str:
    global _NSENTER
    if _NSENTER is None:
        found = shutil.which("nsenter") or shutil.which("nsenter", path="/usr/bin:/bin:/usr/sbin:/sbin")
        if found is None:
            raise LabError("nsenter (util-linux) is needed to start processes in a lab namespace")
        _NSENTER = found
    return _NSENTER


class Sandbox:
    """A network namespace plus a cgroup; processes started here run in both.

    The base of :class:`Node` and :class:`Pod`; do not create one directly.

    Example::

        >>> r = lab.node.run(["ip", "-br", "addr"])      # doctest: +SKIP
        >>> print(r.stdout)                              # doctest: +SKIP
    """

    def __init__(self, lab: Lab, name: str, netns: str, cgroup: str) -> None:
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

    def __init__(self, lab: Lab, name: str, netns: str, cgroup: str, index: int) -> None:
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


class Lab:
    """A node namespace and its pods; see the module documentation.

    Use it as a context manager (or call :meth:`close`): closing kills every
    process in the lab's cgroups and removes its namespaces and cgroups.  With
    ``register_atexit`` (the default) the lab is also closed when the
    interpreter exits.  A Lab is not thread-safe.

    Example::

        >>> with Lab() as lab:                            # doctest: +SKIP
        ...     a, b = lab.add_pod("a"), lab.add_pod("b")
        ...     a.run(["ping", "-c1", "-W2", b.ipv6])
    """

    #: The node namespace (it has its own cgroup too).
    node: Node

    def __init__(self, *, register_atexit: bool = True) -> None:
        self._owner_pid = os.getpid()
        self._closed = False
        self._atexit = False
        self._netns_created: list[str] = []
        self._cgroups_made = False
        self._procs: list[subprocess.Popen[Any]] = []
        self._owned: list[subprocess.Popen[Any]] = []
        self._pods: dict[str, Pod] = {}
        self._lock_fd: Optional[int] = None
        self._lock_path: Optional[str] = None
        #: The lab's id: 6 random hex digits.
        self.id: str = ""
        #: Directory holding all the lab's cgroups: ``<cgroup2 mount>/socklb-lab/<id>``.
        self.cgroup: str = ""
        try:
            self._setup()
        except BaseException as e:
            cleanup_error: Optional[LabError] = None
            try:
                self.close()
            except LabError as ce:
                cleanup_error = ce
            if not isinstance(e, Exception) or (isinstance(e, LabError) and cleanup_error is None):
                raise
            detail = f"; cleaning up also failed: {cleanup_error}" if cleanup_error else ""
            raise LabError(f"building the lab failed: {_describe(e)}{detail}") from e
        if register_atexit:
            atexit.register(self.close)
            self._atexit = True

    # -- construction --------------------------------------------------------

    def _setup(self) -> None:
        try:
            mount = _cg.cgroup2_mount()
        except SocklbError as e:
            raise LabError(f"a lab needs cgroup v2: {e}") from e
        if os.geteuid() != 0:
            raise LabError("a lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
        _nsenter()
        self._take_lock(mount)
        self.cgroup = os.path.join(mount, CGROUP_DIR, self.id)
        self._cgroups_made = True
        _cg.make_cgroup(self.cgroup)
        node_cg = _cg.make_cgroup(os.path.join(self.cgroup, "node"))
        node_ns = f"{NETNS_PREFIX}{self.id}-node"
        _create_netns(node_ns, self._netns_created)
        self.node = Node(self, "node", node_ns, node_cg)
        _write_sysctls(
            node_ns,
            {
                "net.ipv4.ip_forward": "1",
                "net.ipv6.conf.all.forwarding": "1",
                "net.ipv6.conf.all.accept_dad": "0",
                "net.ipv6.conf.default.accept_dad": "0",
                # Answer every packet to an untranslated service address with an
                # ICMP error, however many: no rate limit for errors.
                "net.ipv4.icmp_ratemask": "0",
                "net.ipv4.icmp_ratelimit": "0",
                "net.ipv6.icmp.ratelimit": "0",
                "net.ipv6.icmp.ratemask": "",
            },
        )
        with _ipr(node_ns) as ipr:
            ipr.link("set", index=1, state="up")
            ipr.route("add", dst=SERVICE_CIDR4, type="unreachable")
            ipr.route("add", dst=SERVICE_CIDR6, type="unreachable", family=socket.AF_INET6)

    def _take_lock(self, mount: str) -> None:
        for _attempt in range(20):
            try:
                os.makedirs(LOCK_DIR, mode=0o755, exist_ok=True)
                lab_id = secrets.token_hex(3)
                if (
                    os.path.lexists(_netns_path(f"{NETNS_PREFIX}{lab_id}-node"))
                    or os.path.lexists(os.path.join(mount, CGROUP_DIR, lab_id))
                    or os.path.lexists(os.path.join(LOCK_DIR, lab_id + ".lock"))
                ):
                    continue
                tmp = os.path.join(LOCK_DIR, f".{lab_id}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # LOCK_DIR removed concurrently by another lab
                continue
            except OSError as e:
                raise LabError(f"cannot create a lock file in {LOCK_DIR}: {e}") from e
            final = os.path.join(LOCK_DIR, lab_id + ".lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.link(tmp, final)  # atomic, never replaces an existing lock
            except OSError:
                os.close(fd)
                continue
            finally:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            self.id = lab_id
            self._lock_fd = fd
            self._lock_path = final
            return
        raise LabError(f"could not allocate a lab id (lock files in {LOCK_DIR})")

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.id} is closed")

    def _track(self, proc: subprocess.Popen[Any]) -> None:
        self._procs = [p for p in self._procs if p.returncode is None]
        self._procs.append(proc)

    def _own_pipes(self, proc: subprocess.Popen[Any]) -> None:
        self._owned = [p for p in self._owned if p.returncode is None]
        self._owned.append(proc)

    # -- public API ----------------------------------------------------------

    @property
    def pods(self) -> dict[str, Pod]:
        """The pods by name, in the order they were added (a copy)."""
        return dict(self._pods)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def add_pod(self, name: str) -> Pod:
        """Create a pod: namespace, veth pair to the node, addresses, routes, cgroup.

        ``name`` is 1-41 characters of ``a-z``, ``0-9`` and ``-`` (not at either
        end), unique in the lab and not ``node``.  If anything fails, whatever
        was created for the pod is removed and :class:`~socklb.testing.LabError`
        is raised.

        Example::

            >>> client = lab.add_pod("client")            # doctest: +SKIP
            >>> client.ipv4, client.ipv6                  # doctest: +SKIP
            ('10.244.1.2', 'fd00:244:1::2')
        """
        self._check_open()
        if not isinstance(name, str) or not _POD_NAME_RE.match(name) or name == "node":
            raise LabError(
                f"invalid pod name {name!r}: use 1-41 characters a-z, 0-9 and '-' (not at either end), not 'node'"
            )
        if name in self._pods:
            raise LabError(f"lab {self.id} already has a pod named {name!r}")
        index = len(self._pods) + 1
        if index > MAX_PODS:
            raise LabError(f"a lab holds at most {MAX_PODS} pods")
        ns = f"{NETNS_PREFIX}{self.id}-pod-{name}"
        cg = os.path.join(self.cgroup, name)
        pod = Pod(self, name, ns, cg, index)
        created: list[str] = []
        try:
            pod.cgroup = _cg.make_cgroup(cg)
            _create_netns(ns, created)
            self._netns_created.extend(created)
            self._build_pod(pod)
        except BaseException as e:
            problems = self._undo_pod(pod, created)
            detail = f"; cleaning up also failed: {'; '.join(problems)}" if problems else ""
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise LabError(f"adding pod {name!r} to lab {self.id} failed: {_describe(e)}{detail}") from e
        self._pods[name] = pod
        return pod

    def _build_pod(self, pod: Pod) -> None:
        _write_sysctls(
            pod.netns,
            {
                "net.ipv6.conf.all.accept_dad": "0",
                "net.ipv6.conf.default.accept_dad": "0",
            },
        )
        with _ipr(self.node.netns) as node:
            node.link(
                "add",
                ifname=pod.node_ifname,
                kind="veth",
                peer={"ifname": pod.ifname, "net_ns_fd": pod.netns},
            )
            nidx = _one(node.link_lookup(ifname=pod.node_ifname), pod.node_ifname, self.node.netns)
            node.addr("add", index=nidx, address=pod.gateway4, prefixlen=24)
            node.addr("add", index=nidx, address=pod.gateway6, prefixlen=64, flags=_IFA_F_NODAD)
            node.link("set", index=nidx, state="up")
        with _ipr(pod.netns) as ipr:
            ipr.link("set", index=1, state="up")
            pidx = _one(ipr.link_lookup(ifname=pod.ifname), pod.ifname, pod.netns)
            ipr.addr("add", index=pidx, address=pod.ipv4, prefixlen=24)
            ipr.addr("add", index=pidx, address=pod.ipv6, prefixlen=64, flags=_IFA_F_NODAD)
            ipr.link("set", index=pidx, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=pod.gateway4)
            ipr.route("add", dst="::/0", gateway=pod.gateway6, family=socket.AF_INET6)
            # The service ranges are unreachable in the pod too: an untranslated
            # connect() then fails in the system call itself.  (Through the node
            # alone, the ICMPv6 error can arrive while connect() still holds the
            # socket lock; TCP drops it and retries the SYN a second later.)
            ipr.route("add", dst=SERVICE_CIDR4, type="unreachable")
            ipr.route("add", dst=SERVICE_CIDR6, type="unreachable", family=socket.AF_INET6)
        _wait_ready(pod.netns, pod.ifname, pod.ipv6)
        _wait_ready(self.node.netns, pod.node_ifname, pod.gateway6)

    def _undo_pod(self, pod: Pod, created: list[str]) -> list[str]:
        problems: list[str] = []
        try:
            _cg.remove_cgroup(pod.cgroup)
        except Exception as e:
            problems.append(f"cgroup {pod.cgroup}: {_describe(e)}")
        for ns in created:
            try:
                _remove_netns(ns)
                if ns in self._netns_created:
                    self._netns_created.remove(ns)
            except Exception as e:
                problems.append(f"netns {ns}: {_describe(e)}")
        # Removing the pod namespace destroys the veth pair; make sure of it.
        try:
            with _ipr(self.node.netns) as node:
                for idx in node.link_lookup(ifname=pod.node_ifname):
                    node.link("del", index=idx)
        except Exception as e:
            problems.append(f"{pod.node_ifname} in {self.node.netns}: {_describe(e)}")
        return problems

    def close(self) -> None:
        """Kill the lab's processes and remove its namespaces and cgroups.  Idempotent.

        In a forked child of the process that built the lab, close() only marks
        this copy closed and leaves the lab to its owner.

        Raises :class:`~socklb.testing.LabError` listing what could not be
        removed (after trying everything).

        Example::

            >>> lab.close(); lab.close()                  # doctest: +SKIP
        """
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._owner_pid:
            return  # a forked child: the lab belongs to the parent
        if self._atexit:
            atexit.unregister(self.close)
            self._atexit = False
        problems: list[str] = []
        for proc in self._procs:
            if proc.returncode is None:
                try:
                    proc.kill()
                except OSError:
                    pass
        if self._cgroups_made:
            try:
                _cg.remove_cgroup(self.cgroup)
            except Exception as e:
                problems.append(f"cgroup {self.cgroup}: {_describe(e)}")
            _rmdir_quiet(os.path.dirname(self.cgroup))
        for proc in self._procs:
            _reap(proc)
        for proc in self._owned:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._procs.clear()
        self._owned.clear()
        for ns in reversed(self._netns_created):
            try:
                _remove_netns(ns)
            except Exception as e:
                problems.append(f"netns {ns}: {_describe(e)}")
        self._netns_created.clear()
        if self._lock_path is not None:
            try:
                os.unlink(self._lock_path)
            except FileNotFoundError:
                pass
            except OSError as e:
                problems.append(f"lock file {self._lock_path}: {e}")
            self._lock_path = None
            _rmdir_quiet(LOCK_DIR)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if problems:
            raise LabError(f"closing lab {self.id} left things behind: {'; '.join(problems)}")

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._pods)} pods"
        return f"<Lab {self.id} {state}>"


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _one(indices: Sequence[int], ifname: str, ns: str) -> int:
    if len(indices) != 1:
        raise LabError(f"{ifname} not found in {ns}")
    return int(indices[0])


def _wait_ready(ns: str, ifname: str, ipv6: str, timeout: float = _SETTLE_TIMEOUT) -> None:
    """Wait until ``ifname`` in ``ns`` is operationally up and ``ipv6`` is not tentative."""
    want = ipaddress.ip_address(ipv6)
    deadline = time.monotonic() + timeout
    state = "unknown"
    with _ipr(ns) as ipr:
        idx = _one(ipr.link_lookup(ifname=ifname), ifname, ns)
        while True:
            link = ipr.get_links(idx)[0]
            oper = link.get_attr("IFLA_OPERSTATE")
            state = f"operstate {oper}"
            if oper == "UP":
                state = f"{ipv6} missing"
                for a in ipr.get_addr(index=idx, family=socket.AF_INET6):
                    if ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) != want:
                        continue
                    flags = a.get_attr("IFA_FLAGS")
                    flags = int(a["flags"] if flags is None else flags)
                    if flags & _IFA_F_DADFAILED:
                        raise LabError(f"{ns}: duplicate address detection failed for {ipv6}")
                    if flags & _IFA_F_TENTATIVE:
                        state = f"{ipv6} tentative"
                        break
                    return
            if time.monotonic() >= deadline:
                raise LabError(f"{ns}: {ifname} not ready after {timeout:g}s ({state})")
            time.sleep(0.02)


def _reap(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.wait(timeout=5)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        proc.kill()  # not in the cgroup any more? kill it directly
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _lock_is_free(path: str) -> bool:
    """True if no live process holds the lock file at ``path`` (or it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def cleanup_leftovers(include_live: bool = False) -> int:
    """Remove the namespaces, cgroups and lock files that crashed labs left behind.

    A lab counts as crashed when no process holds its lock; labs still in use
    (by this or any other process) are left alone unless ``include_live``.
    Processes in leftover cgroups are killed.  Returns how many namespaces and
    cgroup directories were removed.

    Example::

        >>> cleanup_leftovers()                          # doctest: +SKIP
        3
    """
    ids: dict[str, list[str]] = {}
    for entry in _pr_netns.listnetns():
        m = _NETNS_RE.match(str(entry))
        if m:
            ids.setdefault(m.group(1), []).append(str(entry))
    try:
        mount: Optional[str] = _cg.cgroup2_mount()
    except SocklbError:
        mount = None
    cg_root = os.path.join(mount, CGROUP_DIR) if mount else None
    if cg_root is not None:
        try:
            for entry in os.listdir(cg_root):
                if _ID_RE.match(entry):
                    ids.setdefault(entry, [])
        except FileNotFoundError:
            pass
    stale_tmp: list[str] = []
    try:
        for entry in os.listdir(LOCK_DIR):
            if entry.endswith(".lock") and _ID_RE.match(entry[:-5]):
                ids.setdefault(entry[:-5], [])
            elif entry.startswith(".") and entry.endswith(".tmp"):
                stale_tmp.append(os.path.join(LOCK_DIR, entry))
    except FileNotFoundError:
        pass

    removed = 0
    problems: list[str] = []
    for lab_id, namespaces in sorted(ids.items()):
        lock = os.path.join(LOCK_DIR, lab_id + ".lock")
        if not include_live and not _lock_is_free(lock):
            continue
        if cg_root is not None:
            try:
                removed += _cg.remove_cgroup(os.path.join(cg_root, lab_id))
            except Exception as e:
                problems.append(f"cgroup of lab {lab_id}: {_describe(e)}")
        for ns in namespaces:
            try:
                if _remove_netns(ns):
                    removed += 1
            except Exception as e:
                problems.append(f"netns {ns}: {_describe(e)}")
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"{lock}: {e}")
    for tmp in stale_tmp:
        if _lock_is_free(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    if cg_root is not None:
        _rmdir_quiet(cg_root)
    _rmdir_quiet(LOCK_DIR)
    if problems:
        raise LabError(f"cleanup_leftovers removed {removed} objects but failed on: {'; '.join(problems)}")
    return removed
