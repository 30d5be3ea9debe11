"""The kernel features socklb uses: one table, probed once.

Each :class:`Feature` names what socklb needs, the first Linux release that
has it, and the bit the native probe (``socklb_probe`` in ``csrc/loader.c``)
sets when the running kernel lacks it.  The loader's errors, its choice of
fallbacks, the socket termination switch and the README's requirements all
come from this table.  An optional feature has a ``fallback``: what socklb
does instead, as a user sees it.

A new helper, kfunc, map type or attach type in the BPF programs gets a row
here (with the first kernel that has it) and a row in the probe table of
``csrc/loader.c``; required unless the loader has a fallback for it.

Tests force features missing to cover the fallbacks on any kernel: the
environment variable ``SOCKLB_FORCE_MISSING`` (names, comma-separated) or
:func:`forced_missing`.

>>> SOCK_DESTROY.kernel
'6.5'
>>> [f.name for f in REQUIRED][:2]
['connect', 'sendmsg']
>>> SET_RETVAL.required
False
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

from socklb._native import lib
from socklb.errors import MissingFeatureError

__all__ = [
    "Feature",
    "FEATURES",
    "REQUIRED",
    "SET_RETVAL",
    "SOCK_DESTROY",
    "DIAG_DESTROY",
    "ITER_STORAGE",
    "FORCE_ENV",
    "missing",
    "missing_bits",
    "lacks",
    "require",
    "refresh",
    "forced_missing",
]


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    kernel: str
    """The first Linux release that has it."""
    bit: int
    """SOCKLB_MISSING_* of the native probe."""
    required: bool = True
    """Whether socklb cannot load without it (optional features have a
    fallback instead)."""
    fallback: str = ""
    """What socklb does without it, as a user sees it (optional features)."""

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
        "jiffies64",
        "the bpf_jiffies64() helper in sock_addr programs (the translation mark's clock)",
        "5.5",
        lib.SOCKLB_MISSING_JIFFIES64,
    ),
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
        required=False,
        fallback="connect() and sendmsg() to a service without usable backends fail with EPERM, not ECONNREFUSED",
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
        fallback="sockets on removed backends are terminated from user space (sock_diag SOCK_DESTROY)",
    ),
    Feature(
        "iter_storage",
        "socket-local storage in socket iterators (bpf_sk_storage_get in tracing programs)",
        "5.11",
        lib.SOCKLB_MISSING_ITER_STORAGE,
        required=False,
        fallback="socket_states() raises; without bpf_sock_destroy, sockets on removed backends are not terminated",
    ),
    Feature(
        "diag_destroy",
        "sock_diag SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)",
        "4.5",
        lib.SOCKLB_MISSING_DIAG_DESTROY,
        required=False,
        fallback="without bpf_sock_destroy as well, sockets on removed backends are not terminated",
    ),
    Feature(
        "sock_release",
        "cgroup/sock_release programs that read the socket cookie",
        "5.10",
        lib.SOCKLB_MISSING_SOCK_RELEASE,
        required=False,
        fallback="TCP translation records go to socket-local storage (allocated per connect: a slower connect)",
    ),
    Feature(
        "mptcp_cast",
        "the bpf_skc_to_mptcp_sock() helper in sock_addr programs",
        "5.19",
        lib.SOCKLB_MISSING_MPTCP_CAST,
        required=False,
        fallback="as without sock_release: MPTCP subflows cannot be told apart, so no TCP record goes by cookie",
    ),
)
REQUIRED = tuple(f for f in FEATURES if f.required)
SET_RETVAL = next(f for f in FEATURES if f.name == "set_retval")
SOCK_DESTROY = next(f for f in FEATURES if f.name == "sock_destroy")
DIAG_DESTROY = next(f for f in FEATURES if f.name == "diag_destroy")
ITER_STORAGE = next(f for f in FEATURES if f.name == "iter_storage")
FORCE_ENV = "SOCKLB_FORCE_MISSING"
"""Names of features to treat as missing whatever the kernel has (tests)."""

_lock = threading.Lock()
_missing: Optional[Tuple[Feature, ...]] = None
_forced: Tuple[str, ...] = ()


def _parse_forced(text: str) -> Tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = {f.name for f in FEATURES}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"{FORCE_ENV}: unknown feature {', '.join(bad)} (known: {', '.join(sorted(known))})")
    return names


def missing() -> List[Feature]:
    """The features of the table this kernel lacks (probed once per process),
    plus those forced missing (:data:`FORCE_ENV`, :func:`forced_missing`)."""
    global _missing
    forced = set(_forced) | set(_parse_forced(os.environ.get(FORCE_ENV, "")))
    with _lock:
        if _missing is None:
            bits = int(lib.socklb_probe())
            _missing = tuple(f for f in FEATURES if bits & f.bit)
        probed = _missing
    return [f for f in FEATURES if f in probed or f.name in forced]


def missing_bits() -> int:
    """:func:`missing` as the loader's SOCKLB_MISSING_* bits."""
    bits = 0
    for f in missing():
        bits |= f.bit
    return bits


def lacks(feature: Feature) -> bool:
    """Whether this kernel lacks ``feature`` (or a test forced it missing)."""
    return feature in missing()


@contextlib.contextmanager
def forced_missing(*names: str) -> Iterator[None]:
    """Treat the named features as missing in this process while the block
    runs (a test seam: balancers made inside load their fallbacks)."""
    global _forced
    new = _parse_forced(",".join(names))
    with _lock:
        old = _forced
        _forced = tuple(dict.fromkeys(old + new))
    try:
        yield
    finally:
        with _lock:
            _forced = old


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
