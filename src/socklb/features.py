"""The kernel features socklb uses: one table, probed once.

Each :class:`Feature` names what socklb needs, the first Linux release that
has it, and the bit the native probe (``socklb_probe`` in ``csrc/loader.c``)
sets when the running kernel lacks it.  The loader's errors, the socket
termination switch and the README's requirements all come from this table.

>>> SOCK_DESTROY.kernel
'6.5'
>>> [f.name for f in REQUIRED][:2]
['connect', 'sendmsg']
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ._core import lib
from .errors import MissingFeatureError

__all__ = ["Feature", "FEATURES", "REQUIRED", "SOCK_DESTROY", "missing", "require", "refresh"]


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    kernel: str
    """The first Linux release that has it."""
    bit: int
    """SOCKLB_MISSING_* of the native probe."""
    required: bool = True
    """Whether socklb cannot load without it (optional features turn
    something off instead)."""

    def error(self, detail: str = "") -> MissingFeatureError:
        return MissingFeatureError(self.description, self.kernel, detail)


FEATURES: Tuple[Feature, ...] = (
    Feature("connect", "cgroup/connect4 and cgroup/connect6 programs", "4.17", lib.SOCKLB_MISSING_CONNECT),
    Feature("sendmsg", "cgroup/sendmsg4 and cgroup/sendmsg6 programs", "4.18", lib.SOCKLB_MISSING_SENDMSG),
    Feature("recvmsg", "cgroup/recvmsg4 and cgroup/recvmsg6 programs", "5.2", lib.SOCKLB_MISSING_RECVMSG),
    Feature(
        "getpeername", "cgroup/getpeername4 and cgroup/getpeername6 programs", "5.8", lib.SOCKLB_MISSING_GETPEERNAME
    ),
    Feature("netns_cookie", "bpf_get_netns_cookie() in sock_addr programs", "5.7", lib.SOCKLB_MISSING_NETNS_COOKIE),
    Feature(
        "sk_storage",
        "socket-local storage (bpf_sk_storage_get) in sock_addr programs",
        "5.10",
        lib.SOCKLB_MISSING_SK_STORAGE,
    ),
    Feature(
        "set_retval",
        "the bpf_set_retval() helper (ECONNREFUSED for empty services)",
        "5.18",
        lib.SOCKLB_MISSING_SET_RETVAL,
    ),
    Feature(
        "post_bind",
        "cgroup/post_bind4 and cgroup/post_bind6 programs (NodePort bind protection)",
        "4.17",
        lib.SOCKLB_MISSING_POST_BIND,
    ),
    Feature(
        "sock_destroy",
        "the bpf_sock_destroy kfunc with tcp/udp socket iterators",
        "6.5",
        lib.SOCKLB_MISSING_SOCK_DESTROY,
        required=False,
    ),
    Feature(
        "sock_release",
        "cgroup/sock_release programs that read the socket cookie",
        "5.10",
        lib.SOCKLB_MISSING_SOCK_RELEASE,
        required=False,
    ),
    Feature(
        "mptcp_cast",
        "the bpf_skc_to_mptcp_sock() helper in sock_addr programs",
        "5.19",
        lib.SOCKLB_MISSING_MPTCP_CAST,
        required=False,
    ),
)
REQUIRED = tuple(f for f in FEATURES if f.required)
SOCK_DESTROY = next(f for f in FEATURES if f.name == "sock_destroy")

_lock = threading.Lock()
_missing: Optional[Tuple[Feature, ...]] = None


def missing() -> List[Feature]:
    """The features of the table this kernel lacks (probed once per process)."""
    global _missing
    with _lock:
        if _missing is None:
            bits = int(lib.socklb_probe())
            _missing = tuple(f for f in FEATURES if bits & f.bit)
        return list(_missing)


def refresh() -> None:
    """Forget the cached probe (tests; a kernel does not gain features at run time)."""
    global _missing
    with _lock:
        _missing = None


def require() -> None:
    """Raise MissingFeatureError for the first required feature this kernel lacks."""
    for f in missing():
        if f.required:
            raise f.error(f"running kernel {os.uname().release}")
