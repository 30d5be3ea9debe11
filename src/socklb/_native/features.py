"""The kernel features socklb uses: one table, probed once.

Each :class:`Feature` names what socklb needs, the first Linux release that
has it, and the bit the native probe (``socklb_probe`` in ``csrc/probe.c``)
sets when the running kernel lacks it.  The rows are ``csrc/features.def``'s,
read from the extension: C takes the bits and the probes from the same file.  The loader's errors, its choice of
fallbacks, the socket termination switch and the README's requirements all
come from this table.  An optional feature has a ``fallback``: what socklb
does instead, as a user sees it.

A new helper, kfunc, map type or attach type in the BPF programs gets a row
in ``csrc/features.def`` (with the first kernel that has it and its probe);
required unless the loader has a fallback for it.

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

from socklb._native import ffi, lib
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


def _table() -> Tuple[Feature, ...]:
    """The rows of csrc/features.def, as the extension has them."""
    rows: List[Feature] = []
    while (r := lib.socklb_feature(len(rows))) != ffi.NULL:
        fallback = ffi.string(r.fallback).decode()
        name, description, kernel = (ffi.string(x).decode() for x in (r.name, r.description, r.kernel))
        rows.append(Feature(name, description, kernel, int(r.bit), required=not fallback, fallback=fallback))
    return tuple(rows)


FEATURES: Tuple[Feature, ...] = _table()
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
