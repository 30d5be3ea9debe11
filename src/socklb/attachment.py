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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

from . import pins
from .abi import ATTACH_INFO, U64
from .cgroup import check_cgroup2_dir
from .datapath import Datapath, LinkSet, Map
from .errors import ClosedError, InvalidValueError, SocklbError
from .model import path_text
from .spec import MAX_ATTACHMENTS, PinPaths

if TYPE_CHECKING:
    from .balancer import Balancer

__all__ = ["Attachment", "Attachments", "cgroup_path"]


def cgroup_path(path: object) -> str:
    """A cgroup given as str, bytes or os.PathLike, as one canonical str
    (absolute, symlinks and ``..`` resolved), checked to be a cgroup v2 directory."""
    return check_cgroup2_dir(path_text(path, "cgroup_path"))


@dataclass
class _Entry:
    cgroup: str
    cgroup_id: int
    links: LinkSet
    pin: Optional[str]


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

    # -- queries --------------------------------------------------------------

    def cgroups(self) -> List[str]:
        with self._lock:
            return list(self._entries)

    def unpinned(self) -> int:
        with self._lock:
            return sum(e.pin is None for e in self._entries.values())

    def handle(self, owner: Balancer, cgroup: str) -> Attachment:
        with self._lock:
            entry = self._entries[cgroup]
            att = self._handles.get(cgroup)
            if att is None or att._entry is not entry:
                att = Attachment(owner, self, entry)
                self._handles[cgroup] = att
            return att

    def handles(self, owner: Balancer) -> List[Attachment]:
        with self._lock:
            return [self.handle(owner, c) for c in self._entries]

    # -- changes --------------------------------------------------------------

    def _mutating(self, what: str) -> None:
        if os.getpid() != self._pid:
            raise SocklbError(f"{what}: this balancer belongs to process {self._pid}; a forked child may not change it")

    def attach(self, path: str) -> str:
        with self._lock:
            self._mutating("attach")
            self._datapath.handle()
            if path in self._entries:
                raise InvalidValueError("cgroup_path", f"{path} is already attached by this balancer")
            if self._paths is not None and len(self._entries) >= MAX_ATTACHMENTS:
                raise InvalidValueError("cgroup_path", f"a pinned balancer records at most {MAX_ATTACHMENTS} cgroups")
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                cgid = os.fstat(fd).st_ino
                links = self._datapath.attach(fd, path)
            finally:
                os.close(fd)
            entry = _Entry(path, cgid, links, None)
            if self._paths is not None:
                try:
                    self._pin(entry)
                except BaseException:
                    links.close()
                    raise
            self._entries[path] = entry
            return path

    def adopt(self, path: str, cgroup_fd: int, cgroup_id: int) -> None:
        """Take over the links pinned for a cgroup (switched to this datapath's programs)."""
        assert self._paths is not None
        with self._lock:
            pin = self._paths.link_dir(cgroup_id)
            links = self._datapath.adopt_links(cgroup_fd, pin, path)
            self._entries[path] = _Entry(path, cgroup_id, links, pin)
            self._write_record(cgroup_id, path)

    def _write_record(self, cgroup_id: int, path: str) -> None:
        assert self._record is not None
        self._record.update(U64.pack(cgroup_id), ATTACH_INFO.pack(path=os.fsencode(path)), 1)

    def _pin(self, e: _Entry) -> None:
        if self._paths is None:
            raise InvalidValueError("pin", "the balancer has no pin_dir")
        pin = self._paths.link_dir(e.cgroup_id)
        pins.make_dir(pin)
        try:
            e.links.pin(pin, e.cgroup)
            self._write_record(e.cgroup_id, e.cgroup)
        except BaseException:
            e.links.unpin()
            pins.remove_links(pin)
            raise
        e.pin = pin

    def _unpin(self, e: _Entry) -> None:
        if e.pin is None:
            return
        e.links.unpin()
        if self._record is not None and not self._datapath.closed:
            self._record.delete([U64.pack(e.cgroup_id)])
        pins.remove_links(e.pin)
        e.pin = None

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
            e.links.close()
            del self._entries[e.cgroup]

    def release(self, e: _Entry) -> None:
        """Close the handle: detach unless pinned."""
        with self._lock:
            if self._entries.get(e.cgroup) is not e:
                return
            if e.pin is None:
                self.detach(e)
            else:
                e.links.close()
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
                    e.links.close()  # leaves pinned (or the parent's) links attached
                else:
                    self._unpin(e)
                    e.links.close()
            self._entries.clear()


class Attachment:
    """The balancer's programs attached to one cgroup.

    Every socket created by a process in the cgroup or below it is balanced
    until :meth:`detach`.  A context manager (leaving it detaches).  With a
    pinned balancer the links are pinned too: closing the balancer then
    leaves them attached, and the next :meth:`Balancer.open` adopts them.
    """

    def __init__(self, owner: Balancer, registry: Attachments, entry: _Entry) -> None:
        self._owner = owner  # a handle keeps its balancer alive
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

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<Attachment {self.cgroup} {state}{' pinned' if self.pinned else ''}>"
