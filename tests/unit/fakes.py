"""A pure-Python :class:`~socklb.control.codec.Codec` for the planner's unit
tests: simple fixed-size packing with :mod:`struct`, no native extension.

It is not socklb's encoding (no alias tables, a made-up Maglev table) but it
keeps the properties the planner relies on: equal arguments give equal bytes,
a version's members change when a slot would, the usable backends come first,
and the bulk rows of a uniform service are exactly its per-service rows.
"""

from __future__ import annotations

import struct
from array import array
from typing import Dict, List, Sequence, Tuple

from socklb.control.codec import Member, Version
from socklb.model import Algorithm, Backend, BackendState, Protocol, Service

KEEP_ALL = 0xFFFFFFFF

SVC_KEY = struct.Struct("=16sHB")  # address, port, protocol
SVC_VAL = struct.Struct("=IIIIIIBBBB")  # svc, list, count, total weight, members, affinity timeout, algo, flags, ...
ID_KEY = struct.Struct("=I")
SLOT_KEY = struct.Struct("=II")  # list id, index
BACKEND_VAL = struct.Struct("=16sHBI")  # address, port, state, svc id
SLOT_VAL = struct.Struct("=IIII16sHB")  # backend, alias, keep, weight, address, port, state

PROTO: Dict[Protocol, int] = {p: i for i, p in enumerate(Protocol)}
ALGO: Dict[Algorithm, int] = {a: i for i, a in enumerate(Algorithm)}
STATE: Dict[BackendState, int] = {s: i for i, s in enumerate(BackendState)}
DRAINED = 255
F_FALLBACK, F_AFFINITY = 1, 2
O_TERMINATE_TCP = 1


def _is_uniform(svc: Service) -> bool:
    bs = svc.backends
    return (
        svc.algorithm is not Algorithm.MAGLEV
        and all(b.state is BackendState.ACTIVE for b in bs)
        and len({b.weight for b in bs}) == 1
        and bs[0].weight > 0
    )


class FakeUniformRows:
    """The bulk rows of the uniform services among ``services``, packed by
    the per-service functions (so byte for byte what they give)."""

    def __init__(self, codec: FakeCodec, services: Sequence[Service]) -> None:
        self._codec = codec
        self.services = services
        self.mask = bytearray([_is_uniform(s) for s in services])
        self.n = sum(self.mask)
        self.n_backends = sum(len(s.backends) for s, m in zip(services, self.mask) if m)

    def counts(self) -> List[int]:
        return [len(s.backends) for s, m in zip(self.services, self.mask) if m]

    def pack(
        self, svc_ids: Sequence[int], list_ids: Sequence[int], backend_ids: Sequence[int]
    ) -> Tuple[bytearray, bytearray, bytearray, bytearray, bytearray, bytearray]:
        if len(svc_ids) != self.n or len(list_ids) != self.n or len(backend_ids) != self.n_backends:
            raise ValueError("one id for each uniform service, list and backend")
        c = self._codec
        out = tuple(bytearray() for _ in range(6))
        at = 0
        uniform = [s for s, m in zip(self.services, self.mask) if m]
        for svc, svc_id, list_id in zip(uniform, svc_ids, list_ids):
            ids = list(backend_ids[at : at + len(svc.backends)])
            at += len(svc.backends)
            version = c.encode(svc, ids)
            out[0].extend(c.service_key(svc))
            out[1].extend(c.service_value(svc, svc_id, list_id, version))
            out[2].extend(c.id_keys(ids))
            out[3].extend(c.backend_values(svc.backends, svc_id))
            keys, values = c.slot_rows(list_id, version)
            out[4].extend(keys)
            out[5].extend(values)
        return out  # type: ignore[return-value]


class FakeCodec:
    """The :class:`~socklb.control.codec.Codec` of the unit tests.  Counts the
    calls of its bulk packer and of its Maglev table builder."""

    svc_key_size = SVC_KEY.size
    slot_key_size = SLOT_KEY.size
    id_key_size = ID_KEY.size

    def __init__(self) -> None:
        self.bulk_calls = 0
        self.maglev_calls = 0

    def id_key(self, i: int) -> bytes:
        return ID_KEY.pack(i)

    def id_keys(self, ids: Sequence[int]) -> bytes:
        return array("I", ids).tobytes()

    def slot_key(self, list_id: int, index: int) -> bytes:
        return SLOT_KEY.pack(list_id, index)

    def encode(self, svc: Service, ids: Sequence[int]) -> Version:
        usable, fallback = svc.selectable()
        chosen = {id(b) for b in usable}
        by_backend = {id(b): bid for b, bid in zip(svc.backends, ids)}
        members = [Member(by_backend[id(b)], by_backend[id(b)], KEEP_ALL, b.weight, STATE[b.state]) for b in usable]
        members += [
            Member(bid, bid, 0, b.weight, STATE[b.state]) for b, bid in zip(svc.backends, ids) if id(b) not in chosen
        ]
        flags = (F_FALLBACK if fallback else 0) | (F_AFFINITY if svc.affinity else 0)
        return Version(tuple(usable), tuple(members), flags, ALGO[svc.algorithm], sum(b.weight for b in usable))

    def service_key(self, svc: Service) -> bytes:
        return SVC_KEY.pack(svc._a16, svc.port, PROTO[svc.protocol])

    def service_value(self, svc: Service, svc_id: int, list_id: int, version: Version) -> bytes:
        return SVC_VAL.pack(
            svc_id,
            list_id,
            version.n_usable,
            version.total_weight,
            len(version.members),
            svc.affinity.timeout if svc.affinity else 0,
            version.algo,
            version.flags,
            ALGO[svc.algorithm],
            O_TERMINATE_TCP if svc.terminate_tcp else 0,
        )

    def backend_value(self, b: Backend, svc_id: int) -> bytes:
        return BACKEND_VAL.pack(b._a16, b.port, STATE[b.state] if b.weight else DRAINED, svc_id)

    def backend_values(self, bs: Sequence[Backend], svc_id: int) -> bytes:
        return b"".join(self.backend_value(b, svc_id) for b in bs)

    def slot_rows(self, list_id: int, version: Version) -> Tuple[bytes, bytes]:
        keys = b"".join(self.slot_key(list_id, i) for i in range(len(version.members)))
        values = []
        for i, m in enumerate(version.members):
            b = version.usable[i] if i < version.n_usable else None
            addr, port = (b._a16, b.port) if b is not None else (bytes(16), 0)
            values.append(SLOT_VAL.pack(m.backend_id, m.alias_id, m.keep, m.weight, addr, port, m.user_state))
        return keys, b"".join(values)

    def maglev_table(self, version: Version, size: int) -> bytes:
        """Not Maglev: the usable backends' ids round robin, ``size`` of them."""
        self.maglev_calls += 1
        ids = [m.backend_id for m in version.members[: version.n_usable]]
        return array("I", [ids[i % len(ids)] for i in range(size)]).tobytes()

    def uniform_rows(self, services: Sequence[Service]) -> FakeUniformRows:
        self.bulk_calls += 1
        return FakeUniformRows(self, services)


def decode_svc_value(raw: bytes) -> Tuple[int, ...]:
    """(svc id, list id, count, total weight, members, affinity timeout, algo, flags, requested algo, opts)."""
    return tuple(SVC_VAL.unpack(raw))
