"""Lab network namespaces: their names, creating and removing them, running
code inside one (:func:`_in_netns`: a thread that joined it, checked), writing
its sysctls, netlink sockets into it, waiting for an interface to settle, and
finding ``nsenter`` for the processes a :class:`~socklb.testing.lab.Sandbox` starts.

Every function here refuses a namespace whose name is not a lab's
(``slb-<id>-node``, ``slb-<id>-pod-<name>``): nothing acts on the caller's.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped,unused-ignore]
from pyroute2 import netns as _pr_netns  # type: ignore[import-untyped,unused-ignore]

from socklb.testing.errors import LabError

#: Every lab network namespace is named ``slb-<id>-node`` or ``slb-<id>-pod-<name>``.
NETNS_PREFIX = "slb-"
_NETNS_DIR: str = str(_pr_netns.NETNS_RUN_DIR)
_NETNS_RE = re.compile(r"^slb-([0-9a-f]{6})-(?:node|pod-[a-z0-9][a-z0-9-]*)$")
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
