"""Reading pinned state back: the meta record, the services, the repairs.

A restarted controller (``Balancer.open``) rebuilds its
:class:`~socklb.control.state.State` from the maps.  A service is read back from its
current list, which holds exactly one version of it (every member with its
weight and state), so a service whose update was interrupted is exactly its
old or its new version.  Whatever no current list refers to was written by an
update that never swapped in, or was about to be deleted: it becomes garbage,
deleted by the next clean-up.  A service whose maps disagree with what its
description encodes to (killed between the swap and the post-swap writes) is
marked dirty and rewritten.
"""

from __future__ import annotations

import errno
import os
import socket
from array import array
from typing import Dict, List, Optional, Tuple

from socklb._native import abi, check, ffi, lib
from socklb._native.abi import ATTACH_INFO, BACKEND_VAL, META, SLOT_KEY, U32, U64
from socklb.control.attachment import Attachments
from socklb.control.encode import (
    NATIVE,
    Member,
    backend_value,
    decode,
    encode,
    maglev_entries,
    member_of,
    service_value,
    slot_rows,
)
from socklb.control.state import Programmed, State
from socklb.control.writer import Tables
from socklb.datapath import pins
from socklb.datapath.cgroup import cgroup2_mount
from socklb.datapath.live import GROUP_EXCLUDE, GROUP_PROGRAMS, Map
from socklb.datapath.spec import MAX_ATTACHMENTS, DatapathSpec, PinPaths
from socklb.errors import IncompatiblePinsError, InvalidValueError, NotFoundError, PermissionDeniedError
from socklb.model import Algorithm, Service

__all__ = [
    "read_meta",
    "no_meta_error",
    "adopt",
    "read_services",
    "read_programmed",
    "check_adoptable",
    "adopt_attachments",
]


def no_meta_error(pin_dir: str) -> IncompatiblePinsError:
    return IncompatiblePinsError(pin_dir, 0, lib.SOCKLB_LAYOUT_VERSION, "maps are pinned but no meta map")


def read_meta(paths: PinPaths) -> Optional[DatapathSpec]:
    """The spec the pinned maps were made with, None if nothing is pinned;
    refuses another layout version (never misread)."""
    if not os.path.exists(paths.meta):
        if pins.pinned_maps(paths.root):
            raise no_meta_error(paths.root)
        return None
    buf = ffi.new("uint8_t[]", META.size)
    actual = ffi.new("uint32_t *")
    check(lib.socklb_read_pinned(paths.meta.encode(), buf, META.size, actual), f"reading {paths.meta}")
    meta = META.unpack(bytes(ffi.buffer(buf)))
    expected = lib.SOCKLB_LAYOUT_VERSION
    if meta.magic != lib.SOCKLB_META_MAGIC:
        raise IncompatiblePinsError(paths.root, 0, expected, "the meta map is not socklb's")
    if meta.layout_version != expected or actual[0] != META.size:
        raise IncompatiblePinsError(paths.root, meta.layout_version, expected)
    return DatapathSpec.from_meta(meta)


class _Tables:
    """Every entry of the service maps, read once."""

    def __init__(self, t: Tables, spec: DatapathSpec) -> None:
        e = spec.map_entries()
        self.services = t.services.items(e["services"])
        self.backends = {U32.unpack(k)[0]: v for k, v in t.backends.items(e["backends"])}
        self.lists: Dict[int, Dict[int, Member]] = {}
        self.raw: Dict[int, Dict[int, bytes]] = {}
        for k, v in t.slots.items(e["slots"]):
            sk = SLOT_KEY.unpack(k)
            self.lists.setdefault(sk.list_id, {})[sk.index] = member_of(v)
            self.raw.setdefault(sk.list_id, {})[sk.index] = v
        self.tables = {U32.unpack(k)[0] for k in t.maglev.keys(e["maglev"])}

    def members(self, value: bytes) -> Tuple[Member, ...]:
        v = abi.SVC_VAL.unpack(value)
        entries = self.lists.get(v.list_id, {})
        got = tuple(entries[i] for i in range(v.members) if i in entries)
        if len(got) != v.members:
            raise InvalidValueError("list", "incomplete")
        return got

    def slot_values(self, list_id: int, n: int) -> bytes:
        """The list's slot values as the map holds them, concatenated."""
        entries = self.raw.get(list_id, {})
        return b"".join(entries.get(i, b"") for i in range(n))


_REREADS = 64
"""How many times a reader re-reads a service its owner keeps rewriting."""


def _entry(
    t: Tables, r: _Tables, key: bytes, value: bytes
) -> Optional[Tuple[Service, Tuple[Member, ...], Dict[int, bytes]]]:
    """One service read consistently while its owner may be writing: (the
    service, its list's members, their backends), or None if it is gone.

    The walks of ``services``, ``backends`` and ``slots`` are separate: a
    list swapped in between (the writer swaps the list id in one update and
    deletes the old list and removed backends only after) leaves an entry
    whose list is already gone.  Such a service is read again on its own: its
    entry, then its list and backends, then its entry once more; while the
    entry is unchanged its list and backends cannot have been deleted, so
    what was read is one version of it (old or new), never none.  Raises
    InvalidValueError or KeyError for what socklb never writes."""
    try:
        members0 = r.members(value)
        return decode(key, value, members0, r.backends), members0, r.backends
    except (InvalidValueError, KeyError):
        pass
    for _ in range(_REREADS):
        v = t.services.lookup(key)
        if v is None:
            return None  # removed: no longer programmed
        sv = abi.SVC_VAL.unpack(v)
        members: List[Member] = []
        backends: Dict[int, bytes] = {}
        for i in range(sv.members):
            raw = t.slots.lookup(SLOT_KEY.pack(list_id=sv.list_id, index=i))
            if raw is None:
                break
            m = member_of(raw)
            b = t.backends.lookup(U32.pack(m.backend_id))
            if b is None:
                break
            members.append(m)
            backends[m.backend_id] = b
        if t.services.lookup(key) == v and len(members) == sv.members:
            return decode(key, v, members, backends), tuple(members), backends
    return None


def read_services(t: Tables, spec: DatapathSpec) -> List[Service]:
    """The services the kernel's tables describe right now, as a restarted
    controller would read them (entries socklb never writes are left out).
    Safe while an owner writes: each service in its old or its new version."""
    return [svc for svc, _ids in read_programmed(t, spec)]


def read_programmed(t: Tables, spec: DatapathSpec) -> List[Tuple[Service, Dict[Tuple[str, int], int]]]:
    """Like :func:`read_services`, with each service's backend ids by
    (address, port): what ``socklb services`` shows (read-only)."""
    r = _Tables(t, spec)
    out = []
    for key, value in r.services:
        try:
            got = _entry(t, r, key, value)
            if got is None:
                continue
            svc, members, backends = got
        except (InvalidValueError, KeyError):
            continue
        ids = {}
        for m in members:
            b = BACKEND_VAL.unpack(backends[m.backend_id])
            ids[(abi.addr_text(b.addr), socket.ntohs(b.port))] = m.backend_id
        out.append((svc, ids))
    return out


def adopt(t: Tables, spec: DatapathSpec) -> Tuple[State, List[Service]]:
    """The state the pinned maps hold, with orphans queued as garbage, and
    the services that must be rewritten."""
    r = _Tables(t, spec)
    state = State()
    used_lists, used_backends, dirty = set(), set(), []
    for key, value in r.services:
        v = abi.SVC_VAL.unpack(value)
        try:
            members = r.members(value)
            svc = decode(key, value, members, r.backends)
        except (InvalidValueError, KeyError):
            # Not something socklb writes, even when killed: drop it rather than guess.
            state.garbage.services.append(key)
            continue
        by_key = {}
        for m in members:
            b = BACKEND_VAL.unpack(r.backends[m.backend_id])
            by_key[(abi.addr_text(b.addr), socket.ntohs(b.port))] = m.backend_id
        ids = array("I", [by_key[(b.address, b.port)] for b in svc.backends])
        version = encode(svc, ids)
        vals = {bid: backend_value(b, v.svc_id) for b, bid in zip(svc.backends, ids)}
        consistent = (
            version.members == members
            # the selectable slots' addresses the datapath picks
            and slot_rows(v.list_id, version)[1] == r.slot_values(v.list_id, len(members))
            and value == service_value(svc, v.svc_id, v.list_id, version)
            and all(r.backends[bid] == val for bid, val in vals.items())
            and (
                svc.algorithm is not Algorithm.MAGLEV
                or not version.usable
                or t.maglev.lookup(U32.pack(v.list_id))
                == bytes(
                    ffi.buffer(
                        maglev_entries(
                            version.usable,
                            [m.backend_id for m in version.members[: version.n_usable]],
                            spec.maglev_size,
                        )
                    )
                )
            )
        )
        state.put(
            svc.key, Programmed(svc, v.svc_id, v.list_id, ids, v.count, len(members), NATIVE, dirty=not consistent)
        )
        state.svc_ids.mark(v.svc_id)
        state.list_ids.mark(v.list_id)
        used_lists.add(v.list_id)
        for bid in ids:
            state.backend_ids.mark(bid)
            used_backends.add(bid)
        if not consistent:
            dirty.append(svc)
            state.dirty_hint = True
    g = state.garbage
    for lid, got in r.lists.items():
        if lid not in used_lists:
            state.list_ids.mark(lid)
            g.slots.extend(SLOT_KEY.pack(list_id=lid, index=i) for i in got)
            g.list_ids.append(lid)
    for lid in r.tables - used_lists:
        state.list_ids.mark(lid)
        g.maglev.append((U32.pack(lid), lid))
        if lid not in g.list_ids:
            g.list_ids.append(lid)
    for bid in r.backends:
        if bid not in used_backends:
            state.backend_ids.mark(bid)
            g.backends.append((U32.pack(bid), bid))
    return state, dirty


def check_adoptable(pin_path: str) -> None:
    """Refuse to adopt from ``pin_path`` before anything is created there."""
    try:
        pinned = os.listdir(os.path.join(pin_path, "maps"))
    except (FileNotFoundError, NotADirectoryError):
        pinned = []
    except PermissionError as e:
        raise PermissionDeniedError(f"reading {pin_path}", e.errno or errno.EACCES) from None
    if "meta" not in pinned:
        if pinned:
            raise no_meta_error(pin_path)
        raise NotFoundError(f"nothing is pinned in {pin_path}")


def adopt_attachments(registry: Attachments, record: Map, paths: PinPaths) -> None:
    """Take over the pinned links of every cgroup that still exists; drop the
    pins and records of the others."""
    recorded = {
        U64.unpack(k)[0]: os.fsdecode(ATTACH_INFO.unpack(v).path.rstrip(b"\0"))
        for k, v in record.items(MAX_ATTACHMENTS)
    }
    names = [n for n in os.listdir(paths.links) if n.isdigit()]  # others are not socklb's: left alone
    # Attachments first, then the exclusions below them.
    excl = GROUP_PROGRAMS[GROUP_EXCLUDE][0]
    is_excl = {n: os.path.exists(os.path.join(paths.links, n, excl)) for n in names}
    for name in sorted(names, key=lambda n: (is_excl[n], int(n))):
        cgid = int(name)
        path = recorded.pop(cgid, None) or _find_cgroup(cgid)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if path else -1
        except OSError:
            fd = -1
        if fd < 0 or os.fstat(fd).st_ino != cgid:
            # The cgroup is gone: its links are defunct; drop the pins.
            if fd >= 0:
                os.close(fd)
            pins.remove_links(os.path.join(paths.links, name))
            record.delete([U64.pack(cgid)])
            continue
        try:
            assert path is not None
            if not is_excl[name]:
                registry.adopt(path, fd, cgid)
            elif not registry.adopt_exclusion(path, fd, cgid):
                # Its attachment is gone: the exclusion means nothing.
                pins.remove_links(os.path.join(paths.links, name))
                record.delete([U64.pack(cgid)])
        finally:
            os.close(fd)
    # Recorded, but no links were pinned.
    record.delete([U64.pack(cgid) for cgid in recorded])


def _find_cgroup(cgid: int) -> Optional[str]:
    """The cgroup v2 directory whose inode (cgroup id) is ``cgid``, if any."""
    for root, dirs, _files in os.walk(cgroup2_mount()):
        for d in dirs:
            p = os.path.join(root, d)
            try:
                if os.stat(p).st_ino == cgid:
                    return p
            except OSError:
                continue
    return None
