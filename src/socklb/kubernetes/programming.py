"""How the node agent programs its balancer: the Services that changed
translated (a translation is kept with the resourceVersions it came from),
the frontends whose value changed written in one :meth:`Balancer.apply`, and
full syncs (:meth:`Balancer.sync`) after each (re)list.  The balancer is seen
through :class:`ServiceWriter`, the few methods the agent needs."""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Set, Tuple, Union

from socklb.datapath.node import usable_node_address
from socklb.kubernetes.reflector import Reflector
from socklb.kubernetes.store import KeptSlice, SvcId, _first, _rv_of, expand
from socklb.kubernetes.translation import Network, Node, translate_with_notes
from socklb.model import Algorithm, Service, ServiceKey

__all__ = ["Changes", "ServiceWriter"]

logger = logging.getLogger("socklb.kubernetes")


class Changes(Protocol):
    """What :meth:`Balancer.sync` returns that the agent reads (:class:`socklb.SyncResult`)."""

    @property
    def added(self) -> Sequence[ServiceKey]: ...
    @property
    def updated(self) -> Sequence[ServiceKey]: ...
    @property
    def removed(self) -> Sequence[ServiceKey]: ...


class ServiceWriter(Protocol):
    """What the agent needs of a :class:`socklb.Balancer`: a full sync, a
    partial batch, the services programmed, and the node's addresses."""

    def sync(self, services: Iterable[Service], *, batch: Optional[int] = None) -> Changes: ...

    def apply(
        self, upserts: Iterable[Service] = (), removals: Iterable[ServiceKey] = (), *, missing_ok: bool = False
    ) -> Changes: ...

    def services(self) -> List[Service]: ...

    def set_node_addresses(self, addresses: Iterable[str]) -> None: ...

    def refresh_node_addresses(self) -> List[str]: ...


def _node_address(text: str) -> bool:
    """Whether a Node object's address is one NodePorts can answer on."""
    try:
        return usable_node_address(text)
    except ValueError:
        logger.warning("node address %r is not an IP address: ignored", text)
        return False


class Programming:
    """The agent's apply thread: what it wants programmed and how it writes it
    (a part of :class:`~socklb.kubernetes.agent.Agent`, which holds the state)."""

    balancer: ServiceWriter
    services_reflector: Reflector
    slices_reflector: Reflector
    proxy_name: Optional[str]
    algorithm: Algorithm
    apply_external_traffic_policy: bool
    external_ip_cidrs: Tuple[Network, ...]
    node_addresses: str
    sync_batch: Optional[int]
    freeze_gc: bool
    retry_initial: float
    retry_max: float
    counts: Dict[str, int]
    first_sync: threading.Event
    programming_latency: Any
    apply_durations: Any
    full_sync_durations: Any
    last_apply_wall: Optional[float]
    last_apply_monotonic: Optional[float]
    _cond: Any
    _slices_of: Dict[SvcId, Tuple[Tuple[str, str], ...]]
    _node_addrs_given: Optional[List[str]]
    _wanted: Dict[SvcId, Tuple[Service, ...]]
    _claims: Dict[ServiceKey, Union[SvcId, List[SvcId]]]
    _no_local: Dict[SvcId, int]
    _cache: Dict[SvcId, Tuple[Any, Tuple[Service, ...], int]]
    _cache_node: Optional[Node]
    _retry: Set[ServiceKey]
    _retry_failures: int
    _retry_at: float
    _gc_paused: bool

    def _resume_gc(self) -> None:
        """Let the cyclic collector run again if the agent paused it (see ``freeze_gc``)."""
        if self._gc_paused:
            self._gc_paused = False
            gc.enable()

    def _translate(
        self, sid: SvcId, node: Node, slices_of: Dict[SvcId, Tuple[Tuple[str, str], ...]]
    ) -> Tuple[Service, ...]:
        """The frontends of one Service.  The result is kept with the resourceVersions
        it came from: the same Service and slices (and node) give it again without
        translating, which makes the full sync after a re-list cheap."""
        store = self.services_reflector.store
        obj = store.get(sid) or (store.get(("", sid[1])) if sid[0] == "default" else None)
        if obj is None:
            self._no_local.pop(sid, None)
            self._cache.pop(sid, None)
            return ()
        sstore = self.slices_reflector.store
        found = [(k, o) for k, o in ((k, sstore.get(k)) for k in slices_of.get(sid, ())) if o is not None]
        if node != self._cache_node:
            self._cache, self._cache_node = {}, node
        # One flat tuple of objects that exist anyway (the resourceVersions, the slices' keys).
        sig = (_rv_of(obj), *[x for k, o in sorted(found, key=_first) for x in (k, _rv_of(o))])
        hit = self._cache.get(sid)
        if hit is not None and hit[0] == sig and sig[0] is not None and sig[0] != "":
            frontends, no_local = hit[1], hit[2]
        else:
            t = translate_with_notes(
                [expand(obj)],
                [o if isinstance(o, KeptSlice) else expand(o) for _, o in found],
                node,
                self.proxy_name,
                algorithm=self.algorithm,
                apply_external_traffic_policy=self.apply_external_traffic_policy,
                external_ip_cidrs=self.external_ip_cidrs,
            )
            self.counts["services_translated"] += 1
            self.counts["notes"] += len(t.notes)
            frontends, no_local = tuple(t.services), len(t.no_local_endpoints)
            self._cache[sid] = (sig, frontends, no_local)
        if no_local:
            self._no_local[sid] = no_local
        else:
            self._no_local.pop(sid, None)
        return frontends

    def _value(self, key: ServiceKey) -> Optional[Service]:
        owners = self._claims.get(key)
        if not owners:
            return None
        owner = min(owners) if isinstance(owners, list) else owners
        for s in self._wanted[owner]:
            if s.key == key:
                return s
        return None

    def _set_wanted(self, sid: SvcId, new: Tuple[Service, ...]) -> None:
        for s in self._wanted.pop(sid, ()):
            k = s.key
            owners = self._claims.get(k)
            if owners is None:
                continue
            if isinstance(owners, list):
                if sid in owners:
                    owners.remove(sid)
                if len(owners) == 1:
                    self._claims[k] = owners[0]
                elif not owners:
                    del self._claims[k]
            elif owners == sid:
                del self._claims[k]
        if new:
            self._wanted[sid] = new
            for s in new:
                k = s.key
                owners = self._claims.get(k)
                if owners is None:
                    self._claims[k] = sid
                elif isinstance(owners, list):
                    owners.append(sid)
                else:
                    self._claims[k] = [owners, sid]

    def _apply_dirty(self, dirty: Set[SvcId], node: Node, triggers: Dict[SvcId, List[float]]) -> None:
        t0 = time.monotonic()
        with self._cond:
            slices_of = {s: self._slices_of.get(s, ()) for s in dirty}
        translated = {s: self._translate(s, node, slices_of) for s in dirty}
        affected: Set[ServiceKey] = set(self._retry)
        for s, new in translated.items():
            affected.update(v.key for v in self._wanted.get(s, ()))
            affected.update(v.key for v in new)
        before = {k: self._value(k) for k in affected}
        for s, new in translated.items():
            self._set_wanted(s, new)
        failed = self._write(affected, before, force=set(self._retry))
        self._after_apply(t0, triggers, failed, full=False)

    def _write(
        self, keys: Iterable[ServiceKey], before: Dict[ServiceKey, Optional[Service]], force: Set[ServiceKey]
    ) -> Set[ServiceKey]:
        """Write the frontends among ``keys`` whose value differs from ``before``
        (or that are in ``force``) with one :meth:`Balancer.apply`; if that batch
        is refused, each on its own, so that one bad service holds back only
        itself.  Returns the keys that failed (retried later)."""
        upserts: List[Service] = []
        removals: List[ServiceKey] = []
        for k in keys:
            new = self._value(k)
            if new == before.get(k) and k not in force:
                continue
            if new is None:
                removals.append(k)
            else:
                upserts.append(new)
        if len(upserts) + len(removals) > 1:
            try:
                self.balancer.apply(upserts=upserts, removals=removals, missing_ok=True)
                self.counts["upserts"] += len(upserts)
                self.counts["removes"] += len(removals)
                return set()
            except Exception as e:
                logger.warning(
                    "programming %d services at once failed (%s: %s): programming them one by one",
                    len(upserts) + len(removals),
                    type(e).__name__,
                    e,
                )
        failed: Set[ServiceKey] = set()
        for u in upserts:
            failed |= self._write_one([u], [])
        for r in removals:
            failed |= self._write_one([], [r])
        return failed

    def _write_one(self, upserts: List[Service], removals: List[ServiceKey]) -> Set[ServiceKey]:
        try:
            self.balancer.apply(upserts=upserts, removals=removals, missing_ok=True)
        except Exception as e:
            what = upserts[0] if upserts else removals[0]
            self.counts["writes_failed"] += 1
            logger.warning("programming %s failed: %s: %s (will retry)", what, type(e).__name__, e)
            return {upserts[0].key if upserts else removals[0]}
        self.counts["upserts"] += len(upserts)
        self.counts["removes"] += len(removals)
        return set()

    def _program_node(self, node: Node) -> None:
        """Give the balancer the node's addresses (see ``node_addresses``);
        a failure is logged, the services are programmed anyway."""
        try:
            if self.node_addresses == "discover":
                self.balancer.refresh_node_addresses()
            elif self.node_addresses == "node":
                addrs = sorted({a for a in node.addresses if _node_address(a)})
                if addrs != self._node_addrs_given:
                    self.balancer.set_node_addresses(addrs)
                    self._node_addrs_given = addrs
                    logger.info("node %s: NodePorts on %s", node.name, ", ".join(addrs) or "loopback only")
        except Exception as e:
            logger.warning("node %s: cannot give the balancer its addresses (%s: %s)", node.name, type(e).__name__, e)

    def _apply_full(self, node: Node, triggers: Dict[SvcId, List[float]]) -> None:
        t0 = time.monotonic()
        self._program_node(node)
        with self._cond:
            slices_of = dict(self._slices_of)  # the tuples are never changed, only replaced
        keys = self.services_reflector.keys()
        self._wanted, self._claims = {}, {}
        self._no_local = {}
        store = self.services_reflector.store
        for gone in [s for s in self._cache if s not in store and (s[0] != "default" or ("", s[1]) not in store)]:
            del self._cache[gone]
        for k in keys:
            sid = k if k[0] else ("default", k[1])
            self._set_wanted(sid, self._translate(sid, node, slices_of))
        del keys
        wanted = [v for v in (self._value(k) for k in self._claims) if v is not None]
        failed: Set[ServiceKey] = set()
        try:
            result = self.balancer.sync(wanted, batch=self.sync_batch)
            self.counts["upserts"] += len(result.added) + len(result.updated)
            self.counts["removes"] += len(result.removed)
        except Exception as e:
            # Too many services, a kernel error: program what fits one by one.
            logger.warning("full sync failed (%s: %s): programming the services one by one", type(e).__name__, e)
            self.counts["writes_failed"] += 1
            # Against what is programmed: unchanged services are not rewritten, and the
            # ones nobody wants any more are removed.
            programmed: Dict[ServiceKey, Optional[Service]] = {s.key: s for s in self.balancer.services()}
            failed = self._write(set(self._claims) | set(programmed), programmed, force=set())
        self.counts["full_syncs"] += 1
        self._after_apply(t0, triggers, failed, full=True)
        if self.freeze_gc:
            # What the translation and the balancer just built lives until the next full
            # sync: keep the cyclic collector from walking it again and again (at 50,000
            # services a full collection pauses the agent for a second or more).
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._resume_gc()
        # The LIST pages and the translations' temporaries are freed by now: give the
        # free pages at the top of the heap and inside it back to the system.
        _malloc_trim()
        self.first_sync.set()

    def _after_apply(self, t0: float, triggers: Dict[SvcId, List[float]], failed: Set[ServiceKey], full: bool) -> None:
        now_wall, now = time.time(), time.monotonic()
        for times in triggers.values():
            for t in times:
                self.programming_latency.add(max(0.0, now_wall - t))
        (self.full_sync_durations if full else self.apply_durations).add(now - t0)
        self.counts["applies"] += 1
        self._retry = failed
        if failed:
            self._retry_failures += 1
            delay = min(self.retry_max, self.retry_initial * 2 ** (self._retry_failures - 1))
            self._retry_at = now + delay
        else:
            self._retry_failures = 0
            self.last_apply_wall, self.last_apply_monotonic = now_wall, now


def _load_malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        libc = ctypes.CDLL(None)
        trim: Callable[[int], int] = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def _malloc_trim() -> None:
    if _MALLOC_TRIM is not None:
        try:
            _MALLOC_TRIM(0)
        except Exception:  # never let housekeeping fail an apply
            pass
