"""Attachments: a balancer's programs on a cgroup.

:class:`Attachments` is the registry a balancer owns: the link sets of every
cgroup it attached to, their pins and the pinned record of their paths.
:class:`Attachment` is the handle a user holds for one of them, with a closed
contract like cilium/ebpf's ``Link``:

- :meth:`Attachment.detach` detaches (and removes its pins); idempotent;
- :meth:`Attachment.pin` / :meth:`Attachment.unpin` keep it attached past
  the balancer's close (and adoptable by :meth:`Balancer.open`), or not;
- :meth:`Attachment.close` releases the handle: it detaches an unpinned
  attachment and leaves a pinned one in place.

A handle keeps its balancer alive; the balancer does not keep handles alive
(it keeps the links), so an unreferenced balancer is freed at once, never
by a later cycle collection.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

from typing_extensions import Self

from socklb._native.abi import ATTACH_INFO, U64
from socklb.datapath import pins
from socklb.datapath.cgroup import check_cgroup2_dir
from socklb.datapath.live import GROUP_EXCLUDE, GROUP_HOSTONLY, GROUP_PROGRAMS, Datapath, LinkSet, Map
from socklb.datapath.spec import MAX_ATTACHMENTS, PinPaths
from socklb.errors import ClosedError, InvalidValueError, SocklbError
from socklb.model import path_text

__all__ = ["Attachment", "Attachments", "cgroup_path"]


def cgroup_path(path: object) -> str:
    """A cgroup given as str, bytes or os.PathLike, as one canonical str
    (absolute, symlinks and ``..`` resolved), checked to be a cgroup v2 directory."""
    return check_cgroup2_dir(path_text(path, "cgroup_path"))


SCOPES = ("all", "host-netns-only")


@dataclass
class _Exclusion:
    cgroup: str
    cgroup_id: int
    links: LinkSet  # the exclude_* programs on the excluded cgroup
    pin: Optional[str]


@dataclass
class _Entry:
    cgroup: str
    cgroup_id: int
    links: LinkSet
    pin: Optional[str]
    gate: Optional[LinkSet] = None  # hostonly_* programs (scope host-netns-only), attached first
    exclusions: Dict[str, _Exclusion] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return "host-netns-only" if self.gate is not None else "all"

    def link_sets(self) -> List[LinkSet]:
        return ([self.gate] if self.gate is not None else []) + [self.links]


class Attachments:
    """The attachments of one balancer (see the module docstring)."""

    def __init__(self, datapath: Datapath, pin_paths: Optional[PinPaths], record: Optional[Map]) -> None:
        self._datapath = datapath
        self._paths = pin_paths
        self._record = record  # cgroup id -> path, for pinned links
        self._lock = datapath.lock
        self._entries: Dict[str, _Entry] = {}
        self._handles: weakref.WeakValueDictionary[str, Attachment] = weakref.WeakValueDictionary()
        self._pid = os.getpid()
        self.detached = False  # since the last reclaim of sock_tcp slots (see detach)

    # -- queries --------------------------------------------------------------

    def cgroups(self) -> List[str]:
        with self._lock:
            return list(self._entries)

    def unpinned(self) -> int:
        with self._lock:
            return sum(e.pin is None for e in self._entries.values())

    def handle(self, owner: object, cgroup: str) -> Attachment:
        with self._lock:
            entry = self._entries[cgroup]
            att = self._handles.get(cgroup)
            if att is None or att._entry is not entry:
                att = Attachment(owner, self, entry)
                self._handles[cgroup] = att
            return att

    def handles(self, owner: object) -> List[Attachment]:
        with self._lock:
            return [self.handle(owner, c) for c in self._entries]

    # -- changes --------------------------------------------------------------

    def _mutating(self, what: str) -> None:
        if os.getpid() != self._pid:
            raise SocklbError(f"{what}: this balancer belongs to process {self._pid}; a forked child may not change it")

    def _records(self) -> int:
        return len(self._entries) + sum(len(e.exclusions) for e in self._entries.values())

    def _excluded_by(self, path: str) -> Optional[_Entry]:
        for e in self._entries.values():
            if path in e.exclusions:
                return e
        return None

    def attach(self, path: str, scope: str = "all", exclude: Sequence[str] = ()) -> str:
        with self._lock:
            self._mutating("attach")
            self._datapath.handle()
            if scope not in SCOPES:
                raise InvalidValueError("scope", f"must be one of {', '.join(SCOPES)}, not {scope!r}")
            if path in self._entries:
                raise InvalidValueError("cgroup_path", f"{path} is already attached by this balancer")
            if self._excluded_by(path) is not None:
                raise InvalidValueError("cgroup_path", f"{path} is excluded from an attachment of this balancer")
            if self._paths is not None and self._records() + 1 + len(exclude) > MAX_ATTACHMENTS:
                raise InvalidValueError("cgroup_path", f"a pinned balancer records at most {MAX_ATTACHMENTS} cgroups")
            for i, x in enumerate(exclude):
                self._check_exclusion(path, x, f"exclude[{i}]")
            if len(set(exclude)) != len(exclude):
                raise InvalidValueError("exclude", "a cgroup is listed twice")
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            gate: Optional[LinkSet] = None
            try:
                cgid = os.fstat(fd).st_ino
                # The gate first: programs of one cgroup run in the order attached.
                if scope == "host-netns-only":
                    gate = self._datapath.attach(fd, path, GROUP_HOSTONLY)
                try:
                    links = self._datapath.attach(fd, path)
                except BaseException:
                    if gate is not None:
                        gate.close()
                    raise
            finally:
                os.close(fd)
            entry = _Entry(path, cgid, links, None, gate)
            try:
                if self._paths is not None:
                    self._pin(entry)
                for x in exclude:
                    self._exclude(entry, x)
            except BaseException:
                for done in list(entry.exclusions.values()):
                    self._unexclude(entry, done)
                self._unpin(entry)
                for ls in entry.link_sets():
                    ls.close()
                raise
            self._entries[path] = entry
            return path

    def _check_exclusion(self, attached: str, path: str, name: str) -> None:
        if not path.startswith(attached.rstrip("/") + "/"):
            raise InvalidValueError(
                name, f"{path} is not below the attached cgroup {attached}: only a part of an attachment is excluded"
            )
        if path in self._entries:
            raise InvalidValueError(name, f"{path} is attached by this balancer itself; detach it instead")
        if self._excluded_by(path) is not None:
            raise InvalidValueError(name, f"{path} is excluded already")

    def _exclude(self, e: _Entry, path: str) -> _Exclusion:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            cgid = os.fstat(fd).st_ino
            links = self._datapath.attach(fd, path, GROUP_EXCLUDE)
        finally:
            os.close(fd)
        x = _Exclusion(path, cgid, links, None)
        if e.pin is not None:
            try:
                x.pin = self._pin_links([links], x.cgroup_id, x.cgroup)
            except BaseException:
                links.close()
                raise
        e.exclusions[path] = x
        return x

    def _unexclude(self, e: _Entry, x: _Exclusion) -> None:
        if x.pin is not None:
            x.links.unpin()
            if self._record is not None and not self._datapath.closed:
                self._record.delete([U64.pack(x.cgroup_id)])
            pins.remove_links(x.pin)
            x.pin = None
        x.links.close()
        e.exclusions.pop(x.cgroup, None)

    def exclude(self, e: _Entry, path: str) -> None:
        with self._lock:
            self._mutating("exclude")
            self._live(e)
            self._check_exclusion(e.cgroup, path, "cgroup_path")
            if self._paths is not None and self._records() >= MAX_ATTACHMENTS:
                raise InvalidValueError("cgroup_path", f"a pinned balancer records at most {MAX_ATTACHMENTS} cgroups")
            self._exclude(e, path)

    def include(self, e: _Entry, path: str) -> None:
        with self._lock:
            self._mutating("include")
            self._live(e)
            x = e.exclusions.get(path)
            if x is None:
                raise InvalidValueError("cgroup_path", f"{path} is not excluded from {e.cgroup}")
            self._unexclude(e, x)

    def adopt(self, path: str, cgroup_fd: int, cgroup_id: int) -> None:
        """Take over the links pinned for a cgroup (switched to this datapath's programs)."""
        assert self._paths is not None
        with self._lock:
            pin = self._paths.link_dir(cgroup_id)
            gate = None
            if os.path.exists(os.path.join(pin, GROUP_PROGRAMS[GROUP_HOSTONLY][0])):
                gate = self._datapath.adopt_links(cgroup_fd, pin, path, GROUP_HOSTONLY)
            links = self._datapath.adopt_links(cgroup_fd, pin, path)
            self._entries[path] = _Entry(path, cgroup_id, links, pin, gate)
            self._write_record(cgroup_id, path)

    def adopt_exclusion(self, path: str, cgroup_fd: int, cgroup_id: int) -> bool:
        """Take over the exclusion pinned for a cgroup; False (nothing taken)
        if no attachment of this balancer is above it any more."""
        assert self._paths is not None
        with self._lock:
            owner = None
            for e in self._entries.values():
                if path.startswith(e.cgroup.rstrip("/") + "/") and (owner is None or len(e.cgroup) > len(owner.cgroup)):
                    owner = e
            if owner is None:
                return False
            pin = self._paths.link_dir(cgroup_id)
            links = self._datapath.adopt_links(cgroup_fd, pin, path, GROUP_EXCLUDE)
            owner.exclusions[path] = _Exclusion(path, cgroup_id, links, pin)
            self._write_record(cgroup_id, path)
            return True

    def _write_record(self, cgroup_id: int, path: str) -> None:
        assert self._record is not None
        self._record.update(U64.pack(cgroup_id), ATTACH_INFO.pack(path=os.fsencode(path)), 1)

    def _pin_links(self, sets: List[LinkSet], cgroup_id: int, cgroup: str) -> str:
        if self._paths is None:
            raise InvalidValueError("pin", "the balancer has no pin_dir")
        pin = self._paths.link_dir(cgroup_id)
        pins.make_dir(pin)
        try:
            for ls in sets:
                ls.pin(pin, cgroup)
            self._write_record(cgroup_id, cgroup)
        except BaseException:
            for ls in sets:
                ls.unpin()
            pins.remove_links(pin)
            raise
        return pin

    def _pin(self, e: _Entry) -> None:
        pin = self._pin_links(e.link_sets(), e.cgroup_id, e.cgroup)
        e.pin = pin
        done: List[_Exclusion] = []
        try:
            for x in e.exclusions.values():
                if x.pin is None:
                    x.pin = self._pin_links([x.links], x.cgroup_id, x.cgroup)
                    done.append(x)
        except BaseException:
            for x in done:
                x.links.unpin()
                pins.remove_links(x.pin or "")
                x.pin = None
            raise

    def _unpin(self, e: _Entry) -> None:
        for x in e.exclusions.values():
            if x.pin is not None:
                x.links.unpin()
                if self._record is not None and not self._datapath.closed:
                    self._record.delete([U64.pack(x.cgroup_id)])
                pins.remove_links(x.pin)
                x.pin = None
        if e.pin is None:
            return
        for ls in e.link_sets():
            ls.unpin()
        if self._record is not None and not self._datapath.closed:
            self._record.delete([U64.pack(e.cgroup_id)])
        pins.remove_links(e.pin)
        e.pin = None

    def _close_links(self, e: _Entry) -> None:
        for x in e.exclusions.values():
            x.links.close()
        for ls in e.link_sets():
            ls.close()

    def pin(self, e: _Entry) -> None:
        with self._lock:
            self._mutating("pin")
            self._live(e)
            if e.pin is None:
                self._pin(e)

    def unpin(self, e: _Entry) -> None:
        with self._lock:
            self._mutating("unpin")
            self._live(e)
            self._unpin(e)

    def detach(self, e: _Entry) -> None:
        with self._lock:
            if self._entries.get(e.cgroup) is not e:
                return  # detached already
            self._mutating("detach")
            self._unpin(e)
            self._close_links(e)
            del self._entries[e.cgroup]
            # Its TCP sockets that close from now on run no release program:
            # their sock_tcp slots are reclaimed at the next attach or reconcile.
            self.detached = True

    def release(self, e: _Entry) -> None:
        """Close the handle: detach unless pinned."""
        with self._lock:
            if self._entries.get(e.cgroup) is not e:
                return
            if e.pin is None:
                self.detach(e)
            else:
                self._close_links(e)
                del self._entries[e.cgroup]

    def program_ids(self, e: _Entry) -> List[int]:
        with self._lock:
            self._live(e)
            return e.links.program_ids(e.cgroup)

    def _live(self, e: _Entry) -> None:
        if self._entries.get(e.cgroup) is not e or not e.links.alive:
            raise ClosedError(f"{e.cgroup} is not attached")

    def close_all(self, detach_pinned: bool) -> None:
        """Release every attachment: pinned ones stay attached unless
        ``detach_pinned``; a forked child only lets go of its copies."""
        with self._lock:
            child = os.getpid() != self._pid
            for e in list(self._entries.values()):
                if child or (e.pin is not None and not detach_pinned):
                    self._close_links(e)  # leaves pinned (or the parent's) links attached
                else:
                    self._unpin(e)
                    self._close_links(e)
            self._entries.clear()


class Attachment:
    """The balancer's programs attached to one cgroup.

    Every socket created by a process in the cgroup or below it is balanced
    until :meth:`detach`.  A context manager (leaving it detaches).  With a
    pinned balancer the links are pinned too: closing the balancer then
    leaves them attached, and the next :meth:`Balancer.open` adopts them.
    """

    def __init__(self, owner: object, registry: Attachments, entry: _Entry) -> None:
        self._owner = owner  # a handle keeps its balancer (the owner of the links) alive
        self._registry = registry
        self._entry = entry
        self.cgroup = entry.cgroup
        """The cgroup directory (canonical path)."""
        self.cgroup_id = entry.cgroup_id

    @property
    def attached(self) -> bool:
        """Whether the programs are still attached through this handle."""
        return self._entry.links.alive

    @property
    def pinned(self) -> bool:
        return self._entry.pin is not None

    @property
    def scope(self) -> str:
        """``"all"``: every socket below the cgroup is balanced;
        ``"host-netns-only"``: only those of the node's network namespace."""
        return self._entry.scope

    @property
    def excluded(self) -> List[str]:
        """The cgroups below this one whose sockets are left alone."""
        with self._registry._lock:
            return sorted(self._entry.exclusions)

    def exclude(self, cgroup: Union[str, bytes, os.PathLike[str]]) -> None:
        """Leave the sockets of ``cgroup`` (a cgroup below this one) and of its
        descendants untranslated, from now on: their ``connect()`` and
        ``sendmsg()`` reach the address dialled (a sidecar sees the VIP).
        Sockets already connected keep their backend."""
        self._registry.exclude(self._entry, cgroup_path(cgroup))

    def include(self, cgroup: Union[str, bytes, os.PathLike[str]]) -> None:
        """Undo :meth:`exclude`: the cgroup's new sockets are balanced again.
        Works for a cgroup removed since (a pod that went away), by the path
        it was excluded with."""
        text = path_text(cgroup, "cgroup_path")
        with self._registry._lock:
            known = text in self._entry.exclusions
        self._registry.include(self._entry, text if known else cgroup_path(text))

    def program_ids(self) -> List[int]:
        """Ids of the programs the links run now (they change on an upgrade)."""
        return self._registry.program_ids(self._entry)

    def pin(self) -> None:
        """Pin the links under the balancer's pin directory: they stay attached
        when the balancer closes.  Needs a balancer with ``pin_dir``."""
        self._registry.pin(self._entry)

    def unpin(self) -> None:
        """Remove the pins: closing the balancer will detach."""
        self._registry.unpin(self._entry)

    def detach(self) -> None:
        """Detach from the cgroup (and remove the pins).  Idempotent; other
        attachments are untouched."""
        self._registry.detach(self._entry)

    def close(self) -> None:
        """Let go of the attachment: detach it unless it is pinned."""
        self._registry.release(self._entry)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        scope = "" if self.scope == "all" else f" scope={self.scope}"
        return f"<Attachment {self.cgroup} {state}{' pinned' if self.pinned else ''}{scope}>"
