"""The ABI between the control plane and the datapath: map records and codes.

Every key and value of socklb's maps is defined once, in ``csrc/socklb_maps.h``;
the BPF programs include that header and cffi parses it.  This module turns
cffi's view of each struct into a :class:`Record` that packs **by field name**
and unpacks into a named tuple, so a change of field order in the header
changes the packing with it (a test checks exactly that).  The enum codes
(protocols, algorithms, backend states) are read from the header's
``SOCKLB_*`` defines by the name of each enum member.

What goes in the records, the encoding of a service and its decoding, is
:mod:`socklb.control.encode`'s.

>>> SVC_KEY.fields
('addr', 'port', 'proto')
>>> SLOT_VAL.unpack(SLOT_VAL.pack(backend_id=7, alias_id=7, keep=0xFFFFFFFF, weight=3, addr=bytes(16), port=0,
...                               user_state=0)).backend_id
7
"""

from __future__ import annotations

import socket
import struct
from collections import namedtuple
from typing import Any, Callable, Dict, Generic, Sequence, Tuple, Type, TypeVar

from socklb._native import ffi, lib
from socklb.model import MAX_BACKENDS_PER_SERVICE, Algorithm, BackendState, Protocol

__all__ = [
    "Record",
    "Codes",
    "SVC_KEY",
    "SVC_VAL",
    "SLOT_KEY",
    "SLOT_VAL",
    "BACKEND_VAL",
    "META",
    "ATTACH_INFO",
    "TRACE_CTL",
    "AFFINITY_KEY",
    "AFFINITY_VAL",
    "U32",
    "U64",
    "PROTO",
    "ALGO",
    "STATE",
    "DRAINING",
    "addr_text",
    "pack_slot_key",
    "u32s",
]

_PRIMS = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Record:
    """One C struct of ``socklb_maps.h``, packed with :mod:`struct` in the
    layout cffi computed for it.

    ``pack`` takes every field by keyword (integers; arrays and nested
    structs as bytes; ports already in network order); padding fields
    (named ``pad...``) pack as zeros and are not arguments.  ``unpack``
    returns a named tuple of the same fields.
    """

    def __init__(self, ctype: str, ffi_: Any = ffi) -> None:
        t = ffi_.typeof(ctype)
        self.ctype = ctype
        fmt, pos, names = "=", 0, []
        for name, f in t.fields:
            if f.offset > pos:
                fmt += f"{f.offset - pos}x"
            size = ffi_.sizeof(f.type)
            pos = f.offset + size
            if name.startswith("pad"):
                fmt += f"{size}x"
                continue
            fmt += _PRIMS[size] if f.type.kind == "primitive" else f"{size}s"
            names.append(name)
        total = ffi_.sizeof(t)
        if total > pos:
            fmt += f"{total - pos}x"
        self.struct = struct.Struct(fmt)
        if self.struct.size != total:  # pragma: no cover - a layout bug
            raise AssertionError(f"{ctype}: packed size {self.struct.size} != C size {total}")
        self.size: int = int(total)
        self.fields: Tuple[str, ...] = tuple(names)
        tup: Any = namedtuple(ctype.split()[-1], names)  # type: ignore[misc]
        self.tuple = tup
        # A keyword-only packer generated for exactly these fields: by name,
        # at the speed of a positional struct.pack.
        args = ", ".join(names)
        env: Dict[str, Any] = {"_pack": self.struct.pack}
        exec(f"def pack(*, {args}):\n    return _pack({args})\n", env)
        self.pack: Callable[..., bytes] = env["pack"]
        unpack, make = self.struct.unpack, tup._make
        self.unpack: Callable[[bytes], Any] = lambda raw: make(unpack(raw))

    def positional(self, *names: str) -> Callable[..., bytes]:
        """A positional packer for hot paths, taking the fields in the order
        ``names`` gives; that order is checked against the header's here, so a
        reordered header fails at import instead of corrupting the maps."""
        if names != self.fields:
            raise ImportError(f"socklb: {self.ctype} has fields {self.fields}, the control plane packs {names}")
        return self.struct.pack

    def __repr__(self) -> str:
        return f"<Record {self.ctype} {self.size} bytes {self.fields}>"


SVC_KEY = Record("struct socklb_svc_key")
SVC_VAL = Record("struct socklb_svc_val")
SLOT_KEY = Record("struct socklb_slot_key")
SLOT_VAL = Record("struct socklb_slot_val")
BACKEND_VAL = Record("struct socklb_backend_val")
META = Record("struct socklb_meta")
ATTACH_INFO = Record("struct socklb_attach_info")
AFFINITY_KEY = Record("struct socklb_affinity_key")
AFFINITY_VAL = Record("struct socklb_affinity_val")
CONFIG = Record("struct socklb_config")
TRACE_CTL = Record("struct socklb_trace_ctl")
U32 = struct.Struct("=I")
U64 = struct.Struct("=Q")

E = TypeVar("E", bound="Any")


class Codes(Generic[E]):
    """The C code of each member of an enum, from the header's
    ``<prefix><MEMBER NAME>`` defines, both ways."""

    def __init__(self, enum_type: Type[E], prefix: str) -> None:
        self.code: Dict[E, int] = {m: int(getattr(lib, prefix + m.name)) for m in enum_type}
        self.member: Dict[int, E] = {c: m for m, c in self.code.items()}
        if len(self.member) != len(self.code):  # pragma: no cover - a header bug
            raise AssertionError(f"{prefix}*: two members share a code")


PROTO: Codes[Protocol] = Codes(Protocol, "SOCKLB_PROTO_")
ALGO: Codes[Algorithm] = Codes(Algorithm, "SOCKLB_ALGO_")
STATE: Codes[BackendState] = Codes(BackendState, "SOCKLB_STATE_")
DRAINING: int = lib.SOCKLB_STATE_DRAINING
"""The state written for a backend of weight 0: kept, never chosen."""

if MAX_BACKENDS_PER_SERVICE != lib.SOCKLB_MAX_SVC_BACKENDS:  # pragma: no cover - the two must agree
    raise ImportError("socklb: model.MAX_BACKENDS_PER_SERVICE differs from SOCKLB_MAX_SVC_BACKENDS")


def addr_text(addr16: bytes) -> str:
    """The text of a 16-byte map address (IPv4 ones are stored v4-mapped)."""
    if addr16[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, addr16[12:])
    return socket.inet_ntop(socket.AF_INET6, addr16)


pack_slot_key = SLOT_KEY.positional("list_id", "index")
"""A slot's key (list id, index), packed positionally (the order checked against the header)."""


def u32s(ids: Sequence[int]) -> bytes:
    """Ids packed as the u32 keys of the backend and Maglev maps, concatenated."""
    return struct.pack(f"={len(ids)}I", *ids)
