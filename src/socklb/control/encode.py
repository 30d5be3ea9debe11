"""The encoding of services into socklb's maps: the one place a plan turns
services into rows, and rows back into services.

:mod:`socklb._native.abi` says what the records are (built from
``csrc/socklb_maps.h``); this module says what goes in them: the list of one
service and its alias table (:func:`encode`), its service entry, backends and
slots, many new services packed at once in C (:class:`UniformRows`), Maglev
tables (built in the native core), and the way back (:func:`decode`).

:data:`NATIVE` gathers these as the :class:`~socklb.control.codec.Codec` the
planner is given (the planner itself imports none of this).

>>> alias_table([3, 1])
[(4, 0), (2, 0)]
"""

from __future__ import annotations

import itertools
import socket
from array import array
from operator import attrgetter
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from socklb._native import check, ffi, lib
from socklb._native.abi import (
    ALGO,
    BACKEND_VAL,
    DRAINING,
    PROTO,
    SLOT_KEY,
    SLOT_VAL,
    STATE,
    SVC_KEY,
    SVC_VAL,
    U32,
    addr_text,
    pack_slot_key,
    u32s,
)
from socklb.control.codec import Codec, Member, Version
from socklb.datapath.limits import DEFAULT_MAGLEV_SIZE, check_maglev_size
from socklb.errors import InvalidValueError
from socklb.model import Affinity, Algorithm, Backend, BackendState, Frontend, Service

__all__ = [
    "Member",
    "Version",
    "KEEP_ALL",
    "MAX_TOTAL_WEIGHT",
    "alias_table",
    "encode",
    "service_key",
    "service_value",
    "backend_value",
    "backend_values",
    "slot_rows",
    "slot_value",
    "member_of",
    "UniformRows",
    "decode",
    "maglev_entries",
    "maglev_bytes",
    "maglev_table",
    "NativeCodec",
    "NATIVE",
]

KEEP_ALL = 0xFFFFFFFF
"""``keep`` of a slot that always gives its own backend (its alias is itself)."""

MAX_TOTAL_WEIGHT = 0xFFFFFFFF
"""The sum of a service's selectable weights must fit socklb_svc_val.total_weight."""


def alias_table(weights: Sequence[int]) -> List[Tuple[int, int]]:
    """The alias table (Vose's method, in exact integer arithmetic) of
    ``weights``: for each slot i, ``(keep, alias)`` where a pick of slot i
    (each with probability 1/n) yields i with probability ``keep / total``
    and slot ``alias`` otherwise, ``total`` being ``sum(weights)``.  So
    backend j is chosen with probability exactly ``weights[j] / total``.

    >>> alias_table([3, 1])
    [(4, 0), (2, 0)]
    >>> alias_table([0, 0])
    Traceback (most recent call last):
    ...
    socklb.errors.InvalidValueError: weights: must be non-negative integers with a positive sum, not [0, 0]
    """
    n, total = len(weights), sum(weights)
    if n == 0 or total <= 0 or any(w < 0 for w in weights):
        raise InvalidValueError("weights", f"must be non-negative integers with a positive sum, not {list(weights)!r}")
    # Slot i holds n * w_i units of "probability" against a cell of total.
    scaled = [w * n for w in weights]
    out = [(total, i) for i in range(n)]
    small = [i for i, s in enumerate(scaled) if s < total]
    large = [i for i, s in enumerate(scaled) if s >= total]
    while small and large:
        lo, hi = small.pop(), large.pop()
        out[lo] = (scaled[lo], hi)
        scaled[hi] -= total - scaled[lo]
        (small if scaled[hi] < total else large).append(hi)
    # What is left is full (exactly: integer arithmetic leaves no rounding).
    return out


def _keep32(keep: int, total: int) -> int:
    """keep/total as the datapath's 32-bit threshold (KEEP_ALL when certain)."""
    return KEEP_ALL if keep >= total else (keep << 32) // total


def encode(svc: Service, ids: Sequence[int]) -> Version:
    """The list and selection parameters of ``svc``, its backends named by
    ``ids`` (the id of each of ``svc.backends``, in that order)."""
    usable, fallback = svc.selectable()
    flags = (lib.SOCKLB_SVC_F_FALLBACK if fallback else 0) | (lib.SOCKLB_SVC_F_AFFINITY if svc.affinity else 0)
    total = sum(b.weight for b in usable)
    if total > MAX_TOTAL_WEIGHT:  # checked before any id is taken or map written
        raise InvalidValueError("backends", f"total weight {total} of {svc} exceeds {MAX_TOTAL_WEIGHT}")
    code, new = STATE.code, tuple.__new__  # Member(...) without its Python-level constructor
    bs = svc.backends
    if len(usable) == len(bs):  # usable is bs, or its every member in the same order
        uids: Sequence[int] = ids
        rest: List[Tuple[Backend, int]] = []
    else:  # usable is a subsequence of bs
        chosen = {id(b) for b in usable}
        uids = [bid for b, bid in zip(bs, ids) if id(b) in chosen]
        rest = [(b, bid) for b, bid in zip(bs, ids) if id(b) not in chosen]
    if svc.algorithm is Algorithm.MAGLEV or len({b.weight for b in usable}) <= 1:
        # Maglev weighs in its table; equal weights need no alias table.
        algo = lib.SOCKLB_ALGO_MAGLEV if svc.algorithm is Algorithm.MAGLEV else lib.SOCKLB_ALGO_RANDOM
        members = [new(Member, (bid, bid, KEEP_ALL, b.weight, code[b.state])) for b, bid in zip(usable, uids)]
    else:
        # Every other algorithm ("random", "weighted") honours weights.
        algo = lib.SOCKLB_ALGO_WEIGHTED
        members = [
            new(Member, (uids[i], uids[alias], _keep32(keep, total), b.weight, code[b.state]))
            for i, (b, (keep, alias)) in enumerate(zip(usable, alias_table([b.weight for b in usable])))
        ]
    members += [new(Member, (bid, bid, 0, b.weight, code[b.state])) for b, bid in rest]
    return Version(usable, tuple(members), flags, algo, total)


def service_key(svc: Service) -> bytes:
    return SVC_KEY.pack(addr=svc._a16, port=socket.htons(svc.port), proto=PROTO.code[svc.protocol])


def service_value(svc: Service, svc_id: int, list_id: int, version: Version) -> bytes:
    return SVC_VAL.pack(
        svc_id=svc_id,
        list_id=list_id,
        count=version.n_usable,
        total_weight=version.total_weight,
        members=len(version.members),
        affinity_timeout=svc.affinity.timeout if svc.affinity else 0,
        algo=version.algo,
        flags=version.flags,
        requested_algo=ALGO.code[svc.algorithm],
        opts=(lib.SOCKLB_SVC_O_TERMINATE_TCP if svc.terminate_tcp else 0) | _FRONTEND_OPTS[svc.frontend],
    )


_FRONTEND_OPTS = {
    Frontend.ADDRESS: 0,
    Frontend.NODE_PORT: lib.SOCKLB_SVC_O_NODE_PORT,
    Frontend.HOST_PORT: lib.SOCKLB_SVC_O_HOST_PORT,
}


def _frontend(opts: int) -> Frontend:
    if opts & lib.SOCKLB_SVC_O_NODE_PORT:
        return Frontend.NODE_PORT
    if opts & lib.SOCKLB_SVC_O_HOST_PORT:
        return Frontend.HOST_PORT
    return Frontend.ADDRESS


_pack_backend = BACKEND_VAL.positional("addr", "port", "state", "svc_id")
_pack_slot = SLOT_VAL.positional("backend_id", "alias_id", "keep", "weight", "addr", "port", "user_state")
_NO_ADDR = bytes(16)


def backend_value(
    b: Backend,
    svc_id: int,
    _pack: Callable[..., bytes] = _pack_backend,
    _code: Dict[BackendState, int] = STATE.code,
    _htons: Callable[[int], int] = socket.htons,
) -> bytes:
    # A drained backend (weight 0) keeps its entry but is never chosen, not
    # even through affinity or a UDP socket's remembered choice.
    return _pack(b._a16, _htons(b.port), _code[b.state] if b.weight else DRAINING, svc_id)


def backend_values(
    bs: Sequence[Backend],
    svc_id: int,
    _pack: Callable[..., bytes] = _pack_backend,
    _code: Dict[BackendState, int] = STATE.code,
    _htons: Callable[[int], int] = socket.htons,
) -> bytes:
    """:func:`backend_value` of each of ``bs``, concatenated (one loop, no call per backend)."""
    return b"".join([_pack(b._a16, _htons(b.port), _code[b.state] if b.weight else DRAINING, svc_id) for b in bs])


def slot_rows(list_id: int, version: Version) -> Tuple[bytes, bytes]:
    """The keys and the values of a list's slots, each concatenated: a
    selectable slot (0..n_usable-1) with its backend's address and port, the
    datapath's pick reads them there; the others with none."""
    members = version.members
    keys = b"".join(map(pack_slot_key, itertools.repeat(list_id, len(members)), range(len(members))))
    backends: Iterator[Optional[Backend]] = itertools.chain(version.usable, itertools.repeat(None))
    return keys, b"".join(map(slot_value, members, backends))


def slot_value(
    m: Member,
    b: Optional[Backend],
    _pack: Callable[..., bytes] = _pack_slot,
    _htons: Callable[[int], int] = socket.htons,
) -> bytes:
    """The slot of ``m``, with the address and port of ``b`` (its backend, if
    the slot is selectable)."""
    if b is None:
        return _pack(m[0], m[1], m[2], m[3], _NO_ADDR, 0, m[4])
    return _pack(m[0], m[1], m[2], m[3], b._a16, _htons(b.port), m[4])


def member_of(v: bytes) -> Member:
    """The control plane's fields of a slot value (the address is the backend's)."""
    s = SLOT_VAL.unpack(v)
    return Member(s.backend_id, s.alias_id, s.keep, s.weight, s.user_state)


_CHUNK = 8192
_backends_of = attrgetter("backends")
_a16_of = attrgetter("_a16")
_port_of = attrgetter("port")
_weight_of = attrgetter("weight")
_state_of = attrgetter("state")
_algorithm_of = attrgetter("algorithm")
_affinity_of = attrgetter("affinity")
_protocol_of = attrgetter("protocol")


def _ids_arg(ids: Sequence[int]) -> Tuple[Any, int, Any]:
    """(pointer or NULL, first id, the buffer kept alive) for a range or other ids."""
    if isinstance(ids, range) and ids.step == 1:
        return ffi.NULL, ids.start if len(ids) else 0, None
    buf = ids if isinstance(ids, array) and ids.typecode == "I" else array("I", ids)
    return ffi.from_buffer("uint32_t[]", buf), 0, buf


class UniformRows:
    """The map elements of many services new to the maps, packed in C
    (``csrc/rows.c``) from columns gathered with C loops: no Python code runs
    per backend.  Only *uniform* services are packed: not Maglev, every
    backend active with one and the same non-zero weight (what nearly every
    Kubernetes service is).  For them :func:`encode` gives the backends in
    order, each slot its own backend with certainty (``KEEP_ALL``), the plain
    random pick; the packer writes exactly that (a test compares the two).

    ``mask[i]`` says whether ``services[i]`` is uniform; :attr:`n` and
    :attr:`n_backends` count them and their backends; :meth:`pack` writes
    their rows once ids are chosen.
    """

    __slots__ = ("_cols", "_counts", "mask", "n", "n_backends", "services")

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = services
        bss = list(map(_backends_of, services))
        counts = array("I", map(len, bss))
        allb = list(itertools.chain.from_iterable(bss))
        # The backends' columns, a few thousand backends at a time: each
        # backend is read from memory once and its other fields from the cache.
        weights, ports = array("I"), array("H")
        states: List[BackendState] = []
        addrs = bytearray(16 * len(allb))
        for i in range(0, len(allb), _CHUNK):
            part = allb[i : i + _CHUNK]
            weights.extend(map(_weight_of, part))
            states += map(_state_of, part)
            addrs[16 * i : 16 * (i + len(part))] = b"".join(map(_a16_of, part))
            ports.extend(map(_port_of, part))
        active = BackendState.ACTIVE
        codes = None if states.count(active) == len(states) else bytes(map(STATE.code.__getitem__, states))
        maglev = Algorithm.MAGLEV
        algos = list(map(_algorithm_of, services))
        self.mask = bytearray([a is not maglev for a in algos])
        total = ffi.new("uint64_t *")
        self.n = int(
            lib.socklb_rows_uniform(
                len(services),
                ffi.from_buffer("uint32_t[]", counts),
                ffi.NULL if codes is None else codes,
                ffi.from_buffer("uint32_t[]", weights),
                ffi.from_buffer(self.mask),
                total,
            )
        )
        self.n_backends = int(total[0])
        self._counts = counts
        self._cols = (addrs, ports, weights, algos)

    def counts(self) -> List[int]:
        """The backends of each uniform service, in order."""
        return list(itertools.compress(self._counts, self.mask))

    def pack(
        self, svc_ids: Sequence[int], list_ids: Sequence[int], backend_ids: Sequence[int]
    ) -> Tuple[bytearray, bytearray, bytearray, bytearray, bytearray, bytearray]:
        """(service keys, service values, backend keys, backend values, slot
        keys, slot values) of the uniform services, each concatenated: the
        k-th uniform service has ``svc_ids[k]`` and ``list_ids[k]``, its
        backends the next of ``backend_ids`` in order."""
        n, nb = self.n, self.n_backends
        if len(svc_ids) != n or len(list_ids) != n or len(backend_ids) != nb:
            raise ValueError("UniformRows.pack: one id for each uniform service, list and backend")
        svcs = self.services
        be_addr, be_port, weights, algos = self._cols
        affs = list(map(_affinity_of, svcs))
        term, fronts = lib.SOCKLB_SVC_O_TERMINATE_TCP, _FRONTEND_OPTS
        opts = bytes([(term if s.terminate_tcp else 0) | fronts[s.frontend] for s in svcs])
        flag = lib.SOCKLB_SVC_F_AFFINITY
        out = (
            bytearray(n * SVC_KEY.size),
            bytearray(n * SVC_VAL.size),
            bytearray(nb * U32.size),
            bytearray(nb * BACKEND_VAL.size),
            bytearray(nb * SLOT_KEY.size),
            bytearray(nb * SLOT_VAL.size),
        )
        svc_ptr, svc_id0, svc_buf = _ids_arg(svc_ids)
        list_ptr, list_id0, list_buf = _ids_arg(list_ids)
        be_ptr, backend_id0, be_buf = _ids_arg(backend_ids)
        buf = ffi.from_buffer
        # Every buffer stays referenced here until the call returns.
        inputs = {
            "counts": buf("uint32_t[]", self._counts),
            "uniform": buf("uint8_t[]", self.mask),
            "svc_addr": buf("uint8_t[]", b"".join(map(_a16_of, svcs))),
            "svc_port": buf("uint16_t[]", array("H", map(_port_of, svcs))),
            "svc_proto": buf("uint8_t[]", bytes(map(PROTO.code.__getitem__, map(_protocol_of, svcs)))),
            "svc_flags": buf("uint8_t[]", bytes([0 if a is None else flag for a in affs])),
            "svc_requested_algo": buf("uint8_t[]", bytes(map(ALGO.code.__getitem__, algos))),
            "svc_opts": buf("uint8_t[]", opts),
            "svc_affinity_timeout": buf("uint32_t[]", array("I", [0 if a is None else a.timeout for a in affs])),
            "be_addr": buf("uint8_t[]", be_addr),
            "be_port": buf("uint16_t[]", be_port),
            "be_weight": buf("uint32_t[]", weights),
            "svc_keys": buf("struct socklb_svc_key[]", out[0]),
            "svc_vals": buf("struct socklb_svc_val[]", out[1]),
            "backend_keys": buf("uint32_t[]", out[2]),
            "backend_vals": buf("struct socklb_backend_val[]", out[3]),
            "slot_keys": buf("struct socklb_slot_key[]", out[4]),
            "slot_vals": buf("struct socklb_slot_val[]", out[5]),
        }
        r = ffi.new("struct socklb_new_rows *")
        r.n = len(svcs)
        for name, ptr in inputs.items():
            setattr(r, name, ptr)
        r.svc_ids, r.list_ids, r.backend_ids = svc_ptr, list_ptr, be_ptr
        r.svc_id0, r.list_id0, r.backend_id0 = svc_id0, list_id0, backend_id0
        packed = lib.socklb_rows_pack(r)
        del inputs, svc_buf, list_buf, be_buf
        if packed != n:  # pragma: no cover - the mask changed under us
            raise AssertionError(f"socklb_rows_pack packed {packed} of {n} services")
        return out


def decode(key: bytes, value: bytes, members: Sequence[Member], backends: Mapping[int, bytes]) -> Service:
    """The Service that a service entry, its list and its backends describe.
    Raises InvalidValueError or KeyError for what socklb never writes."""
    k, v = SVC_KEY.unpack(key), SVC_VAL.unpack(value)
    out = []
    for m in members:
        b = BACKEND_VAL.unpack(backends[m.backend_id])
        if b.svc_id != v.svc_id:
            raise InvalidValueError("backend", "of another service")
        out.append(Backend(addr_text(b.addr), socket.ntohs(b.port), m.weight, STATE.member[m.user_state]))
    return Service(
        addr_text(k.addr),
        socket.ntohs(k.port),
        PROTO.member[k.proto],
        out,
        ALGO.member.get(v.requested_algo, Algorithm.RANDOM),
        Affinity(v.affinity_timeout) if v.flags & lib.SOCKLB_SVC_F_AFFINITY else None,
        bool(v.opts & lib.SOCKLB_SVC_O_TERMINATE_TCP),
        _frontend(v.opts),
        allow_special_frontend=True,  # validated when it was written
    )


# --- Maglev ------------------------------------------------------------------


def _maglev_ident(b: Backend) -> bytes:
    """What names a backend to Maglev: its address and port, so that its
    permutation is the same in every table and every process."""
    return b._a16 + b.port.to_bytes(2, "big")


def maglev_entries(backends: Sequence[Backend], ids: Sequence[int], size: int) -> Any:
    """The Maglev table (a cffi ``uint32_t[size]``) of ``backends``, each
    entry one of ``ids``; built in the native core."""
    if not backends:
        raise InvalidValueError("backends", "maglev needs at least one backend")
    table = ffi.new("uint32_t[]", size)
    weights = ffi.new("uint32_t[]", [b.weight for b in backends])
    check(
        lib.socklb_maglev(
            b"".join(map(_maglev_ident, backends)),
            18,
            weights,
            ffi.new("uint32_t[]", list(ids)),
            len(backends),
            table,
            size,
        ),
        "building a maglev table",
    )
    return table


def maglev_table(backends: Sequence[Backend], size: int = DEFAULT_MAGLEV_SIZE) -> List[int]:
    """The Maglev lookup table socklb builds for these backends: for each of
    ``size`` entries, the index of the backend in ``backends``.  Exposed to
    inspect and test the distribution.

    >>> t = maglev_table([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)], 13)
    >>> sorted(set(t)), len(t)
    ([0, 1], 13)
    """
    size = check_maglev_size(size, "size")
    table = maglev_entries(backends, range(1, len(backends) + 1), size)
    return [int(x) - 1 for x in table]


def maglev_bytes(version: Version, size: int) -> bytes:
    """The Maglev table of a version's usable backends, as the ``maglev`` map's value."""
    ids = [m.backend_id for m in version.members[: version.n_usable]]
    return bytes(ffi.buffer(maglev_entries(version.usable, ids, size)))


class NativeCodec:
    """socklb's :class:`~socklb.control.codec.Codec`: the records of
    ``csrc/socklb_maps.h``, packed by this module's functions (attributes,
    not methods: a call costs what calling the function does)."""

    def __init__(self) -> None:
        self.svc_key_size = SVC_KEY.size
        self.slot_key_size = SLOT_KEY.size
        self.id_key_size = U32.size
        self.id_key = U32.pack
        self.id_keys = u32s
        self.slot_key = pack_slot_key
        self.encode = encode
        self.service_key = service_key
        self.service_value = service_value
        self.backend_value = backend_value
        self.backend_values = backend_values
        self.slot_rows = slot_rows
        self.maglev_table = maglev_bytes
        self.uniform_rows = UniformRows

    def __repr__(self) -> str:
        return "<NativeCodec>"


NATIVE: Codec = NativeCodec()
"""The codec :class:`socklb.Balancer` plans with."""
