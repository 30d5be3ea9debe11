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

This module holds :class:`Lab` and re-exports the rest: :mod:`.sandbox` has
:class:`Sandbox`, :class:`Node` and :class:`Pod` (the processes),
:mod:`.netns` the namespaces (entering one, sysctls, create and remove,
``nsenter``) and :mod:`.cleanup` the lock files and :func:`cleanup_leftovers`.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
from typing import Any, Optional

from socklb.datapath import cgroup as _cg
from socklb.errors import SocklbError
from socklb.testing.cleanup import _ID_RE as _ID_RE
from socklb.testing.cleanup import (
    CGROUP_DIR,
    LOCK_DIR,
    _describe,
    _rmdir_quiet,
    _take_lock,
    cleanup_leftovers,
)
from socklb.testing.cleanup import _lock_is_free as _lock_is_free
from socklb.testing.errors import LabError
from socklb.testing.netns import (
    _IFA_F_NODAD,
    NETNS_PREFIX,
    _create_netns,
    _ipr,
    _nsenter,
    _one,
    _remove_netns,
    _wait_ready,
    _write_sysctls,
)
from socklb.testing.netns import _NETNS_DIR as _NETNS_DIR
from socklb.testing.netns import TIMEOUT_SCALE_ENV as TIMEOUT_SCALE_ENV
from socklb.testing.sandbox import _POD_NAME_RE, Node, Pod, Sandbox

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

MAX_PODS = 254


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
        self.id, self._lock_fd, self._lock_path = _take_lock(mount)
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
