"""The one module that talks to the compiled extension.

It owns the error path (:func:`check`), the feature probe, and the packing of
map keys and values.  The struct layouts come from ``csrc/socklb_maps.h``
through cffi: the ``struct`` formats used to pack them in bulk are derived from
cffi's view of those C structs, so Python cannot drift from the BPF side.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .errors import (
    KernelError,
    MissingFeatureError,
    PermissionDeniedError,
    VerifierError,
)

try:
    from ._native import ffi, lib
except ImportError as e:  # pragma: no cover - only without a build
    raise ImportError(
        "socklb's native extension is not built: install the package with pip "
        "(it needs clang and libbpf-dev), see the README"
    ) from e

__all__ = ["ffi", "lib", "check", "Codec", "probe_missing", "raise_for_load", "htons", "possible_cpus"]

LAYOUT_VERSION: int = lib.SOCKLB_LAYOUT_VERSION


def htons(port: int) -> int:
    """A port as the u16 that holds it in network byte order on this host."""
    return socket.htons(port)


def _raise(op: str, err: int) -> None:
    if err in (_errno.EPERM, _errno.EACCES):
        raise PermissionDeniedError(op, err)
    raise KernelError(op, err)


def check(rc: int, op: str) -> int:
    """Return ``rc`` if it is not negative, else raise the exception for ``-rc``."""
    if rc < 0:
        _raise(op, -rc)
    return rc


# --- Features ---------------------------------------------------------------

# bit -> (feature, first kernel that has it)
FEATURES: Dict[int, Tuple[str, str]] = {
    lib.SOCKLB_MISSING_CONNECT: ("cgroup/connect4 and cgroup/connect6 programs", "4.17"),
    lib.SOCKLB_MISSING_SENDMSG: ("cgroup/sendmsg4 and cgroup/sendmsg6 programs", "4.18"),
    lib.SOCKLB_MISSING_RECVMSG: ("cgroup/recvmsg4 and cgroup/recvmsg6 programs", "5.2"),
    lib.SOCKLB_MISSING_GETPEERNAME: ("cgroup/getpeername4 and cgroup/getpeername6 programs", "5.8"),
    lib.SOCKLB_MISSING_SET_RETVAL: ("the bpf_set_retval() helper (ECONNREFUSED for empty services)", "5.18"),
    lib.SOCKLB_MISSING_SK_STORAGE: ("socket-local storage (bpf_sk_storage_get) in sock_addr programs", "5.10"),
    lib.SOCKLB_MISSING_NETNS_COOKIE: ("bpf_get_netns_cookie() in sock_addr programs", "5.7"),
}


def probe_missing() -> List[Tuple[str, str]]:
    """The kernel features socklb needs that this kernel lacks, as (feature, kernel)."""
    missing = int(lib.socklb_probe())
    return [feat for bit, feat in FEATURES.items() if missing & bit]


def raise_for_load(rc: int, log: str, failed_prog: int) -> None:
    """Turn a failed ``socklb_open`` into the most specific exception."""
    err = -rc
    if err in (_errno.EPERM, _errno.EACCES) and os.geteuid() != 0:
        raise PermissionDeniedError("loading the BPF programs", err)
    missing = probe_missing()
    if missing:
        feature, kernel = missing[0]
        raise MissingFeatureError(feature, kernel, f"running kernel {os.uname().release}")
    if failed_prog >= 0:
        name = ffi.string(lib.socklb_prog_name(failed_prog)).decode()
        raise VerifierError(f"loading {name}", err, log)
    if err in (_errno.EPERM, _errno.EACCES):
        raise PermissionDeniedError("loading the BPF programs", err)
    raise KernelError("loading the BPF object", err, log.strip().splitlines()[-1] if log.strip() else "")


# --- Struct packing -----------------------------------------------------------

_PRIMS = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Codec:
    """Packs and unpacks one C struct of ``socklb_maps.h`` with :mod:`struct`.

    The format is derived from cffi's layout of the struct: integer fields
    pack as native integers (ports are given already in network order, see
    :func:`htons`); arrays of integers pack as raw bytes, which is how
    addresses travel (16 bytes, network order).
    """

    def __init__(self, ctype: str) -> None:
        t = ffi.typeof(ctype)
        fmt = "="
        pos = 0
        self.fields: List[str] = []
        for name, field in t.fields:
            if field.offset > pos:
                fmt += f"{field.offset - pos}x"
            size = ffi.sizeof(field.type)
            if name.startswith("pad"):  # padding packs as zero bytes, not an argument
                fmt += f"{size}x"
                pos = field.offset + size
                continue
            if field.type.kind == "array":
                fmt += f"{size}s"
            elif field.type.kind == "primitive":
                fmt += _PRIMS[size]
            else:  # nested struct: raw bytes
                fmt += f"{size}s"
            pos = field.offset + size
            self.fields.append(name)
        total = ffi.sizeof(t)
        if total > pos:
            fmt += f"{total - pos}x"
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        if self.size != total:  # pragma: no cover - layout bug
            raise AssertionError(f"{ctype}: packed size {self.size} != C size {total}")
        self.pack = self.struct.pack
        self.unpack = self.struct.unpack

    def pack_many(self, rows: List[Tuple[Any, ...]]) -> bytes:
        p = self.struct.pack
        return b"".join([p(*r) for r in rows])


SVC_KEY = Codec("struct socklb_svc_key")
SVC_VAL = Codec("struct socklb_svc_val")
SLOT_KEY = Codec("struct socklb_slot_key")
SLOT_VAL = Codec("struct socklb_slot_val")
BACKEND_VAL = Codec("struct socklb_backend_val")
META = Codec("struct socklb_meta")
ATTACH_INFO = Codec("struct socklb_attach_info")
U32 = struct.Struct("=I")


def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n


@dataclass(frozen=True)
class MapOps:
    """Thin wrappers of the loader's bulk map calls for one map."""

    fd: int
    name: str
    key_size: int
    value_size: int

    def update(self, keys: bytes, values: bytes, n: int, flags: int = 0) -> None:
        if n == 0:
            return
        done = ffi.new("uint32_t *")
        check(
            lib.socklb_map_update(self.fd, keys, values, n, self.key_size, self.value_size, flags, done),
            f"update of map {self.name} ({done[0]} of {n} written)",
        )

    def delete(self, keys: bytes, n: int) -> None:
        if n == 0:
            return
        done = ffi.new("uint32_t *")
        check(
            lib.socklb_map_delete(self.fd, keys, n, self.key_size, done),
            f"delete from map {self.name} ({done[0]} of {n} deleted)",
        )

    def lookup(self, key: bytes, value_size: Optional[int] = None) -> Optional[bytes]:
        buf = ffi.new("uint8_t[]", value_size or self.value_size)
        rc = lib.socklb_map_lookup(self.fd, key, buf)
        if rc == -_errno.ENOENT:
            return None
        check(rc, f"lookup in map {self.name}")
        return bytes(ffi.buffer(buf))

    def keys(self, cap: int) -> List[bytes]:
        buf = ffi.new("uint8_t[]", max(cap, 1) * self.key_size)
        n = check(lib.socklb_map_keys(self.fd, buf, self.key_size, cap), f"walk of map {self.name}")
        raw = bytes(ffi.buffer(buf, n * self.key_size))
        return [raw[i * self.key_size : (i + 1) * self.key_size] for i in range(n)]


if sys.byteorder not in ("little", "big"):  # pragma: no cover
    raise ImportError("unsupported byte order")
