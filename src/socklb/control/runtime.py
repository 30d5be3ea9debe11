"""What a balancer owns in the kernel, opened in order and closed once.

:func:`open_runtime` takes the steps of making a balancer that touch the
system: the pin directory prepared and locked (and what is pinned there read),
the datapath loaded (or its pinned maps reused), the maps bound, the node's
namespace opened.  A step that fails undoes the ones before it.
:class:`Runtime` holds the result; :meth:`Runtime.close` releases it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from socklb._native import features
from socklb.control import adopt, stats, writer
from socklb.control.attachment import Attachments
from socklb.control.nodes import Node
from socklb.control.terminate import Terminator
from socklb.datapath import pins
from socklb.datapath.live import Datapath, Map
from socklb.datapath.spec import DatapathSpec, PinPaths
from socklb.errors import NotFoundError
from socklb.model import path_text

__all__ = ["Runtime", "open_runtime"]

PathArg = Union[str, bytes, "os.PathLike[str]"]


@dataclass
class Runtime:
    """A balancer's kernel objects and the state that describes them."""

    spec: DatapathSpec
    paths: Optional[PinPaths]
    adopted: bool
    """Whether the maps were pinned already (their services are adopted)."""
    datapath: Datapath
    tables: writer.Tables
    node: Node
    meta: Map
    record: Map
    counters: Map
    attachments: Attachments
    terminator: Terminator
    lock_fd: Optional[int]

    def unlock(self) -> None:
        fd, self.lock_fd = self.lock_fd, None
        if fd is not None:
            pins.unlock(fd)

    def close(self, unlock: bool) -> None:
        """Detach what is not pinned, free the programs and maps, close the
        node's namespace; release the pin lock when ``unlock``."""
        self.attachments.close_all(detach_pinned=False)
        self.datapath.close()
        self.node.close()
        if unlock:
            self.unlock()


def _lock_pins(pin_dir: PathArg, adopt_only: bool) -> tuple[PinPaths, int, Optional[DatapathSpec]]:
    """The pin directory prepared and locked, and the spec pinned there (None: nothing pinned)."""
    pin_path = os.path.abspath(path_text(pin_dir, "pin_dir"))
    if adopt_only:
        adopt.check_adoptable(pin_path)
    paths = PinPaths(pins.prepare(pin_path))
    lock_fd = pins.lock(paths.root)
    try:
        pinned = adopt.read_meta(paths)
        if pinned is None and adopt_only:
            raise NotFoundError(f"nothing is pinned in {paths.root}")
    except BaseException:
        pins.unlock(lock_fd)
        raise
    return paths, lock_fd, pinned


def open_runtime(
    spec: DatapathSpec,
    pin_dir: Optional[PathArg],
    adopt_only: bool,
    terminate_sockets: Union[bool, str],
    netns_path: Optional[str],
) -> Runtime:
    """Lock the pins, load the datapath, bind its maps and open the node's namespace."""
    paths: Optional[PinPaths] = None
    lock_fd: Optional[int] = None
    pinned: Optional[DatapathSpec] = None
    if pin_dir is not None:
        paths, lock_fd, pinned = _lock_pins(pin_dir, adopt_only)
        spec = pinned or spec  # adopting: the pinned maps fix the limits
    dp: Optional[Datapath] = None
    try:
        dp = Datapath(spec, paths.root if paths else None)
        if terminate_sockets is True and not dp.termination:
            raise features.SOCK_DESTROY.error(dp.termination_reason)
        m = dp.map
        tables = writer.Tables(
            services=m("services"),
            slots=m("slots"),
            backends=m("backends"),
            maglev=m("maglev"),
            affinity=m("affinity"),
            selections=m("selections"),
        )
        record = m("attachments")
        counters = m("counters")
        attachments = Attachments(dp, paths, record if paths else None)
        terminator = Terminator(
            dp,
            attachments.cgroups,
            bool(terminate_sockets) and bool(dp.termination),
            record=lambda n, n_tcp: stats.add_counters(counters, terminated=n, terminated_tcp=n_tcp),
        )
        meta = m("meta")
        node = Node(m("node_cfg"), m("node_addrs"), m("wild_ports"), netns_path)
    except BaseException:
        if dp is not None:
            dp.close()
        if lock_fd is not None:
            pins.unlock(lock_fd)
        raise
    return Runtime(
        spec, paths, pinned is not None, dp, tables, node, meta, record, counters, attachments, terminator, lock_fd
    )
