"""The node: its network namespace and addresses, and the wildcard-port bitmap.

NodePorts and HostPorts are wildcard frontends (address ``0.0.0.0`` or ``::``):
they answer on the node's addresses (``node_addrs``), and on loopback from the
node's network namespace (its cookie in ``node_cfg``).  ``wild_ports`` has a bit
for every port with a wildcard frontend, so that the datapath looks for one only
when the port has it.  :class:`Node` owns those three maps for a balancer.
"""

from __future__ import annotations

import logging
import os
from itertools import compress
from operator import itemgetter
from typing import Dict, Iterable, List, Mapping, Optional, Union

from socklb._native import abi, lib
from socklb._native.abi import U32
from socklb.datapath import node
from socklb.datapath.live import Map
from socklb.errors import InvalidValueError, MissingFeatureError, SocklbError
from socklb.model import Protocol, ServiceKey
from socklb.model import _address as model_address

__all__ = ["NODE_ADDRS_MAX", "WILD", "Node", "node_address_arg"]
log = logging.getLogger("socklb")

NODE_ADDRS_MAX = int(lib.SOCKLB_MAX_NODE_ADDRS)
WILD = ("0.0.0.0", "::")  # the keys' addresses of wildcard frontends (NodePort, hostPort)
_PROTOS = tuple(p.value for p in Protocol)
_WILD_SET = frozenset(WILD)
_address_of, _port_of = itemgetter(0), itemgetter(1)
_KEY0 = U32.pack(0)


def node_address_arg(value: object) -> Union[str, Dict[bytes, str]]:
    """``"discover"``, or the addresses as {16-byte key: text}, validated."""
    if value == "discover":
        return "discover"
    if isinstance(value, (str, bytes)) or value is None:
        raise InvalidValueError("node_addresses", f"must be an iterable of addresses or 'discover', not {value!r}")
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidValueError("node_addresses", f"must be an iterable of addresses, not {value!r}") from None
    out: Dict[bytes, str] = {}
    for i, a in enumerate(items):
        text, a16, version = model_address(a, f"node_addresses[{i}]", backend=True)
        if (version == 4 and a16[12] == 127) or (version == 6 and a16 == bytes(15) + b"\1"):
            raise InvalidValueError(
                f"node_addresses[{i}]", f"{text} is loopback, which reaches NodePorts from the node's namespace anyway"
            )
        out[a16] = text
    return out


class Node:
    """The node's namespace (an open fd), addresses and wildcard ports of one
    balancer.  Not locked: the balancer calls it under its own lock."""

    def __init__(self, cfg: Map, addrs: Map, wild_ports: Map, netns_path: Optional[str]) -> None:
        self._cfg, self._addrs, self._wild_ports = cfg, addrs, wild_ports
        self._words: Dict[int, int] = {}
        self._set: Dict[bytes, str] = {}
        self._fd_is_node = True
        self._fd: Optional[int] = os.open(netns_path or "/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _path(self) -> str:
        assert self._fd is not None
        return f"/proc/self/fd/{self._fd}"

    # -- the namespace -----------------------------------------------------------

    def set_netns(self, keep_pinned: bool) -> None:
        """Record the namespace's cookie for the datapath; ``keep_pinned``
        (adopted without ``node_netns``) keeps a pinned one."""
        try:
            cookie = node.netns_cookie(self._path())
        except MissingFeatureError as e:
            # Before Linux 5.14: the node's addresses still work; loopback
            # NodePorts and host-netns-only attachments do not (0: no node).
            log.info("%s", e)
            cookie = 0
        self._fd_is_node = True
        if keep_pinned:
            pinned = self.cookie()
            if pinned:
                # Adopted without node_netns: the pinned node stays the node.
                self._fd_is_node = pinned == cookie
                return
        self._cfg.update(_KEY0, cookie.to_bytes(8, "little"), 1)

    def cookie(self) -> int:
        """The cookie of the node's network namespace, as the datapath holds it (0: none)."""
        return int.from_bytes(self._cfg.lookup(_KEY0) or bytes(8), "little")

    # -- addresses ---------------------------------------------------------------

    def addresses(self) -> List[str]:
        return list(self._set.values())

    def set_addresses(self, want: Mapping[bytes, str]) -> None:
        """Make the node's addresses exactly ``want`` (from :func:`node_address_arg`)."""
        if len(want) > NODE_ADDRS_MAX:
            raise InvalidValueError("addresses", f"{len(want)} addresses; a node has at most {NODE_ADDRS_MAX}")
        add = {a16: text for a16, text in want.items() if a16 not in self._set}
        gone = [a16 for a16 in self._set if a16 not in want]
        if add:
            self._addrs.update(b"".join(add), U32.pack(1) * len(add), len(add))
        self._addrs.delete(gone)
        self._set = dict(want)

    def discover(self) -> List[str]:
        """The addresses of the node's namespace (see Balancer.refresh_node_addresses)."""
        if not self._fd_is_node:
            raise SocklbError(
                "refresh_node_addresses: the pinned balancer's node is another network namespace than this "
                "thread's; open it with Balancer.open(pin_dir, node_netns=...) to read the node's addresses"
            )
        return node.discover_addresses(self._path())

    # -- wildcard ports ----------------------------------------------------------

    def sync_wild_ports(self, live: Mapping[ServiceKey, object], keys: Optional[Iterable[ServiceKey]] = None) -> None:
        """Set the bit of every port that has a wildcard frontend among the
        ``live`` services: of every port, or only of the ports of ``keys`` (the
        services a write changed: a port's bit is whether one of its four
        wildcard keys is programmed, so an upsert costs the same with 50,000
        services)."""
        if keys is None:
            words: Dict[int, int] = {}
            for k in live:
                if k[0] in WILD:
                    words[k[1] >> 6] = words.get(k[1] >> 6, 0) | 1 << (k[1] & 63)
        else:
            keys = list(keys)
            ports = set(map(_port_of, compress(keys, map(_WILD_SET.__contains__, map(_address_of, keys)))))
            if not ports:
                return
            words = dict(self._words)
            for port in ports:
                on = any((a, port, proto) in live for a in WILD for proto in _PROTOS)
                w, bit = port >> 6, 1 << (port & 63)
                words[w] = words.get(w, 0) | bit if on else words.get(w, 0) & ~bit
                if not words[w]:
                    del words[w]
        changed = [w for w in set(words) | set(self._words) if words.get(w, 0) != self._words.get(w, 0)]
        if changed:
            raw = b"".join(U32.pack(w) for w in changed)
            vals = b"".join(words.get(w, 0).to_bytes(8, "little") for w in changed)
            self._wild_ports.update(raw, vals, len(changed))
        self._words = words

    def adopt(self) -> None:
        """Read what the pinned maps hold: the bitmap (so that the next
        :meth:`sync_wild_ports` rewrites what differs) and the addresses."""
        for k, v in self._wild_ports.items(lib.SOCKLB_WILD_PORT_WORDS):
            if int.from_bytes(v, "little"):
                self._words[U32.unpack(k)[0]] = int.from_bytes(v, "little")
        self._set = {k: abi.addr_text(k) for k in self._addrs.keys(NODE_ADDRS_MAX)}
