"""The node a balancer serves: its network namespace and its addresses.

Wildcard frontends (``Service.node_port()``, ``Service.host_port()`` without
an address) answer on the node's addresses, and on loopback from the node's
own network namespace; the ``host-netns-only`` scope translates only the
sockets of that namespace.  The datapath knows the namespace by its cookie
(``SO_NETNS_COOKIE``, the value ``bpf_get_netns_cookie()`` returns) and the
addresses as a set (the ``node_addrs`` map); this module finds both.

>>> netns_cookie() > 0                       # doctest: +SKIP
True
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import threading
from typing import Callable, List, Optional, TypeVar

from socklb.errors import InvalidValueError, MissingFeatureError, SocklbError

__all__ = ["netns_cookie", "discover_addresses", "usable_node_address"]

_T = TypeVar("_T")
_CLONE_NEWNET = 0x40000000
_SO_NETNS_COOKIE = 71  # Linux 5.14


def _in_netns(path: Optional[str], fn: Callable[[], _T]) -> _T:
    """Run ``fn`` in the network namespace at ``path`` (None: this thread's),
    on a thread of its own that joins the namespace, so the caller's
    namespace is never changed."""
    if path is None:
        return fn()
    result: List[_T] = []
    error: List[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
                want = os.fstat(fd)
            finally:
                os.close(fd)
            have = os.stat("/proc/thread-self/ns/net")
            if (have.st_dev, have.st_ino) != (want.st_dev, want.st_ino):
                raise SocklbError(f"joining the network namespace {path} did not take effect")
            result.append(fn())
        except BaseException as e:  # handed to the caller
            error.append(e)

    t = threading.Thread(target=target, name="socklb-node-netns", daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():
        raise SocklbError(f"reading the network namespace {path} did not finish within 30 s")
    if error:
        raise error[0]
    return result[0]


def check_netns_path(path: str) -> str:
    """``path`` if it is a network namespace file (``/proc/PID/ns/net``,
    ``/run/netns/NAME``), else InvalidValueError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidValueError("node_netns", f"cannot open {path}: {e.strerror}") from None
    try:
        import fcntl

        NS_GET_NSTYPE = 0xB703
        if fcntl.ioctl(fd, NS_GET_NSTYPE) != _CLONE_NEWNET:
            raise InvalidValueError("node_netns", f"{path} is not a network namespace")
    except OSError:
        raise InvalidValueError("node_netns", f"{path} is not a namespace file") from None
    finally:
        os.close(fd)
    return path


def netns_cookie(path: Optional[str] = None) -> int:
    """The cookie of the network namespace at ``path`` (None: the calling
    thread's), as BPF programs see it."""

    def read() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            raw = s.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8)
        return int.from_bytes(raw, "little")

    try:
        return _in_netns(path, read)
    except OSError as e:
        if e.errno == errno.ENOPROTOOPT:
            raise MissingFeatureError(
                "SO_NETNS_COOKIE (a network namespace's cookie, read from user space)",
                "5.14",
                "without it the node's namespace is not known to the datapath: loopback NodePorts "
                'from the node and attach(scope="host-netns-only") are unavailable',
            ) from e
        raise SocklbError(f"cannot read the cookie of network namespace {path or 'of this thread'}: {e}") from e


def usable_node_address(text: str) -> bool:
    """Whether a wildcard frontend answers on this address of the node:
    every unicast address but loopback (covered by the namespace rule) and
    IPv6 link-local (a connect() there needs a zone)."""
    ip = ipaddress.ip_address(text)
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        return False
    return not (ip.version == 6 and ip.is_link_local)


def discover_addresses(path: Optional[str] = None) -> List[str]:
    """The addresses of every interface in the network namespace at ``path``
    (None: the calling thread's), read with pyroute2, that a wildcard frontend
    answers on (see :func:`usable_node_address`), sorted."""

    def read() -> List[str]:
        from pyroute2 import IPRoute  # type: ignore[import-untyped,unused-ignore]

        with IPRoute() as ipr:
            found = {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()}
        usable = (ipaddress.ip_address(a) for a in found if a != "None" and usable_node_address(a))
        return [str(ip) for ip in sorted(usable, key=lambda ip: (ip.version, int(ip)))]

    return _in_netns(path, read)
