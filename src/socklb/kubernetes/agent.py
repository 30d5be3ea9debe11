"""The node agent: Services and EndpointSlices from the API server, programmed into a :class:`socklb.Balancer`.

One :class:`~socklb.kubernetes.reflector.Reflector` per resource keeps a copy
of the Services, the EndpointSlices and this node's Node object (for its zone
label).  The agent applies what changed:

- **incrementally**: an event marks the Service it concerns (a slice's owner is
  its ``kubernetes.io/service-name`` label, the old and the new one) as dirty;
  the apply thread translates only the dirty Services (with their slices) and
  writes only the frontends whose :class:`socklb.Service` value changed, all
  in one :meth:`Balancer.apply` (one plan, one map write; if the balancer
  refuses the batch, each service on its own, so that one it refuses holds
  back only itself);
- **coalesced** like kube-proxy's ``minSyncPeriod``: an apply starts at once
  when the last one started at least ``min_sync_period`` seconds ago, else
  when that much time has passed; everything that arrived meanwhile goes in one
  apply;
- **in full** after each (re)list of any resource (and when the node's zone
  changes): every Service is translated and :meth:`Balancer.sync` makes the
  programmed set exactly that, touching only what differs.  A balancer made
  with ``pin_dir`` that adopted the state of an earlier agent is therefore
  converged by the first full sync without disturbing unchanged services.

A frontend (address, port, protocol) claimed by two Services goes to the first
by namespace/name, as :func:`~socklb.kubernetes.translate` decides; when that
one lets it go, the other takes it.

Nothing from the API raises out of the agent: malformed objects are skipped by
the translation (and logged), a failed write is logged, counted and retried
with backoff, and the agent keeps going.

>>> from kubernetes import client                                      # doctest: +SKIP
>>> agent = Agent(Balancer(), node_name="node-a", api_client=client.ApiClient(),
...               healthz_port=10256)                                  # doctest: +SKIP
>>> agent.start(); agent.wait_synced(60)                              # doctest: +SKIP
>>> agent.stats()["network_programming_seconds"]["p99"]               # doctest: +SKIP

Measured (:meth:`Agent.stats`): network programming latency, from the
EndpointSlice annotation ``endpoints.kubernetes.io/last-change-trigger-time``
to the end of the map write that applied it (kube-proxy's
``network_programming_duration_seconds``; trigger times older than the agent
are not counted, so a restart does not report the age of old changes); apply
durations, incremental and full; counts of events, writes and errors.
``/healthz`` (``healthz_port``) answers 200 once the first full sync is done
and while no change has waited longer than ``healthz_timeout`` seconds to be
applied (kube-proxy's rule), else 503; ``/metrics`` gives the same numbers in
the Prometheus text format.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import deque
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Set, Tuple, Union

from socklb.kubernetes.health import Health
from socklb.kubernetes.programming import Changes, Programming, ServiceWriter
from socklb.kubernetes.reflector import Event, Reflector, list_function
from socklb.kubernetes.store import (
    ANNOTATION_TRIGGER_TIME,
    Compact,
    KeptSlice,
    Obj,
    SvcId,
    _owner_of,
    _service_id,
    _trigger_time,
    compact,
    expand,
    keep_slice,
    parse_trigger_time,
)
from socklb.kubernetes.translation import DEFAULT_EXTERNAL_IP_CIDRS, Network, Node, external_ip_networks
from socklb.model import Algorithm, Service, ServiceKey

__all__ = [
    "ANNOTATION_TRIGGER_TIME",
    "Agent",
    "Changes",
    "Compact",
    "KeptSlice",
    "Samples",
    "ServiceWriter",
    "compact",
    "expand",
    "keep_slice",
    "parse_trigger_time",
]

logger = logging.getLogger("socklb.kubernetes")


class Samples:
    """Observations of one duration: count, sum, and quantiles of the last ``keep``.

    >>> s = Samples()
    >>> for v in (0.001, 0.002, 0.003, 0.010):
    ...     s.add(v)
    >>> s.summary()["count"], s.quantile(0.5), s.summary()["max"]
    (4, 0.002, 0.01)
    """

    def __init__(self, keep: int = 100_000) -> None:
        self._recent: Deque[float] = deque(maxlen=keep)
        self.count = 0
        self.total = 0.0
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._recent.append(value)
            self.count += 1
            self.total += value

    def values(self) -> List[float]:
        with self._lock:
            return list(self._recent)

    def clear(self) -> None:
        with self._lock:
            self._recent.clear()
            self.count, self.total = 0, 0.0

    def quantile(self, q: float, values: Optional[List[float]] = None) -> Optional[float]:
        """The ``q`` quantile (nearest rank) of the recent observations, or None."""
        v = sorted(self.values() if values is None else values)
        if not v:
            return None
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

    def summary(self) -> Dict[str, Optional[float]]:
        v = sorted(self.values())
        with self._lock:
            count, total = self.count, self.total
        out: Dict[str, Optional[float]] = {"count": count, "sum": total}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            out[name] = self.quantile(q, v) if v else None
        out["max"] = v[-1] if v else None
        with self._lock:
            out["last"] = self._recent[-1] if self._recent else None
        return out


class Agent(Programming, Health):
    """Keep ``balancer`` programmed with the Services of the cluster ``api_client`` talks to, for ``node_name``.

    :param balancer: a :class:`socklb.Balancer` (attached by the caller to the
        cgroups it should balance), or anything with the methods of
        :class:`ServiceWriter`; the agent only programs services.
    :param node_name: this node's name (endpoints' ``nodeName``, the Node object read for its zone).
    :param api_client: a ``kubernetes.client.ApiClient``.
    :param proxy_name: this proxy's ``service.kubernetes.io/service-proxy-name`` (None: the Services without it).
    :param min_sync_period: seconds between the starts of two applies (kube-proxy's ``minSyncPeriod``).
    :param healthz_port: serve ``/healthz`` and ``/metrics`` there (0: any free port; None: no server).
    :param healthz_address: the address to serve on.
    :param healthz_timeout: a change pending longer than this makes ``/healthz`` answer 503.
    :param algorithm, apply_external_traffic_policy: given to :func:`~socklb.kubernetes.translate`.
    :param reflector_options: extra keyword arguments for every :class:`Reflector`
        (``watch_timeout``, ``resync_period``, ``page_size``, backoff, ...).
    :param node_timeout: how long the first sync waits for this node's Node object
        (its zone); after that it goes on without a zone (no zone hints are used)
        until the Node can be read, and re-syncs then.
    :param compact_objects: keep Services as :func:`compact` makes them (what
        the translation reads, as compact JSON: a tenth of the memory of the
        decoded objects) and EndpointSlices as :func:`keep_slice` does (read for
        the translation once, when they arrive: their endpoints are the
        backends the translated services share); the reflectors' stores then
        hold that form.
    :param node_addresses: where the balancer's node addresses (on which
        NodePorts answer) come from: ``"node"`` (default), the Node object's
        InternalIP and ExternalIP addresses, given to
        ``balancer.set_node_addresses`` when they change; ``"discover"``, the
        interfaces of the balancer's node network namespace, read again
        (``balancer.refresh_node_addresses``) at every full sync; ``"none"``:
        left to the caller.
    :param sync_batch: a full sync writes at most this many changed services at
        a time (``Balancer.sync(batch=...)``): the map rows of a first sync of
        50,000 services are never all in memory at once.  None: one write.
    :param freeze_gc: after each full sync, collect and then ``gc.freeze()``
        everything alive, so that Python's cyclic collector does not walk the
        agent's (and the balancer's) long-lived state on every full collection.
        Until the first full sync (at most ``gc_pause_max`` seconds) the
        collector does not run at all: the first LIST and translation make
        millions of long-lived objects and no garbage cycles, and the
        collections they would set off take a tenth of that time.
        Process-wide: for a process that is the agent (the ``socklb kubernetes``
        command sets it), not for a library user's process by default.
    """

    def __init__(
        self,
        balancer: ServiceWriter,
        *,
        node_name: str,
        api_client: Any,
        proxy_name: Optional[str] = None,
        min_sync_period: float = 0.01,
        healthz_port: Optional[int] = None,
        healthz_address: str = "127.0.0.1",
        healthz_timeout: float = 60.0,
        algorithm: Union[str, Algorithm] = Algorithm.RANDOM,
        apply_external_traffic_policy: bool = False,
        reflector_options: Optional[Dict[str, Any]] = None,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        node_timeout: float = 10.0,
        compact_objects: bool = True,
        freeze_gc: bool = False,
        node_addresses: str = "node",
        sync_batch: Optional[int] = 2048,
        external_ip_cidrs: Iterable[Union[str, Network]] = DEFAULT_EXTERNAL_IP_CIDRS,
    ) -> None:
        self.external_ip_cidrs = external_ip_networks(external_ip_cidrs)  # checked first: a bad range changes nothing
        """The externalIPs served (translate()'s allow-list; none by default)."""
        if node_addresses not in ("node", "discover", "none"):
            raise ValueError(f"node_addresses must be 'node', 'discover' or 'none', not {node_addresses!r}")
        self.node_addresses = node_addresses
        self._node_addrs_given: Optional[List[str]] = None
        if not isinstance(node_name, str) or not node_name:
            raise ValueError("node_name must be a non-empty string")
        if min_sync_period < 0:
            raise ValueError("min_sync_period must not be negative")
        from kubernetes import client

        self.balancer = balancer
        self.node_name = node_name
        self.proxy_name = proxy_name
        self.min_sync_period = float(min_sync_period)
        self.healthz_timeout = float(healthz_timeout)
        self.algorithm = Algorithm(algorithm)
        self.apply_external_traffic_policy = apply_external_traffic_policy
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.node = Node(node_name)
        self.freeze_gc = freeze_gc
        self.sync_batch = sync_batch
        self.node_timeout = node_timeout
        self._started = math.inf
        self._gc_paused = False
        self.gc_pause_max = 300.0  # seconds the collector may be paused waiting for the first full sync
        self.max_full_delay = 60.0  # the longest a full sync waits for another resource's re-list
        self._full_since = 0.0
        self.started_wall = time.time()

        # The collections are read through list functions made from the ApiClient: the
        # generated API classes of recent clients import hundreds of models (20 MiB).
        paths = ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/nodes")
        made = {path: list_function(api_client, path) for path in paths}
        lists: Dict[str, Callable[..., Any]] = {p: f for p, f in made.items() if f is not None}
        if len(lists) < len(paths):  # an older client: its generated functions
            core = client.CoreV1Api(api_client)
            discovery = client.DiscoveryV1Api(api_client)
            lists = {
                "/api/v1/services": core.list_service_for_all_namespaces,
                "/apis/discovery.k8s.io/v1/endpointslices": discovery.list_endpoint_slice_for_all_namespaces,
                "/api/v1/nodes": core.list_node,
            }
        opts = dict(reflector_options or {})
        opts.pop("transform", None)
        keep: Dict[str, Optional[Callable[[Obj], Any]]] = {"Service": None, "EndpointSlice": None}
        if compact_objects:
            keep = {"Service": lambda o: compact(o, "Service"), "EndpointSlice": keep_slice}
        self.services_reflector = Reflector(
            lists["/api/v1/services"],
            self._on_service,
            name="services",
            transform=keep["Service"],
            **opts,
        )
        self.slices_reflector = Reflector(
            lists["/apis/discovery.k8s.io/v1/endpointslices"],
            self._on_slice,
            name="endpointslices",
            transform=keep["EndpointSlice"],
            **opts,
        )
        node_opts = dict(opts)
        node_opts["list_kwargs"] = {**opts.get("list_kwargs", {}), "field_selector": f"metadata.name={node_name}"}
        self.node_reflector = Reflector(lists["/api/v1/nodes"], self._on_node, name="node", **node_opts)
        self._reflectors = (self.services_reflector, self.slices_reflector, self.node_reflector)

        # Shared with the reflector threads, under _cond.
        self._cond = threading.Condition()
        self._dirty: Set[SvcId] = set()
        self._full = False
        self._triggers: Dict[SvcId, List[float]] = {}
        self._pending_since: Optional[float] = None  # monotonic time of the oldest change not applied
        self._synced: Set[str] = set()
        # Kept small (tuples, one owner without a list): at 50,000 Services these
        # indexes are a good part of the agent's memory.
        # (A slice's owner is not indexed: the reflector hands over the object it replaces.)
        self._slices_of: Dict[SvcId, Tuple[Tuple[str, str], ...]] = {}

        # The apply thread's own state.
        self._wanted: Dict[SvcId, Tuple[Service, ...]] = {}
        self._claims: Dict[ServiceKey, Union[SvcId, List[SvcId]]] = {}  # a list only when several claim it
        self._no_local: Dict[SvcId, int] = {}
        self._cache: Dict[SvcId, Tuple[Any, Tuple[Service, ...], int]] = {}
        self._cache_node: Optional[Node] = None
        self._retry: Set[ServiceKey] = set()
        self._retry_failures = 0
        self._retry_at = 0.0
        self._last_apply_start = -math.inf

        self.first_sync = threading.Event()
        self.last_apply_wall: Optional[float] = None
        self.last_apply_monotonic: Optional[float] = None
        self.programming_latency = Samples()
        self.apply_durations = Samples()
        self.full_sync_durations = Samples()
        self.counts: Dict[str, int] = dict.fromkeys(
            (
                "service_events",
                "endpointslice_events",
                "node_events",
                "relists",
                "applies",
                "full_syncs",
                "services_translated",
                "upserts",
                "removes",
                "writes_failed",
                "apply_errors",
                "notes",
            ),
            0,
        )
        self._busy = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self._healthz_port = healthz_port
        self._healthz_address = healthz_address

    # -- running -----------------------------------------------------------

    def start(self) -> None:
        """Start the reflectors, the apply thread and the health server; returns at once."""
        if self._thread is not None:
            raise RuntimeError("the agent was started already")
        if self._healthz_port is not None:
            self._serve_health(self._healthz_address, self._healthz_port)
        self._started = time.monotonic()
        if self.freeze_gc and gc.isenabled():
            gc.disable()  # until the first full sync (see freeze_gc)
            self._gc_paused = True
        self._thread = threading.Thread(target=self._loop, name="socklb-agent", daemon=True)
        self._thread.start()
        for r in self._reflectors:
            r.start()

    def run(self) -> None:
        """Start and block until :meth:`stop` (from another thread or a signal handler)."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching and applying (the balancer is left as it is, for its owner to close)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for r in self._reflectors:
            if r._thread is not None:
                r.stop(timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._resume_gc()

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_synced(self, timeout: Optional[float] = None) -> bool:
        """Wait for the first full sync; True if it happened."""
        return self.first_sync.wait(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending (every change seen so far is applied); True if so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if self.first_sync.is_set() and not self._dirty and not self._full and self._busy == 0:
                    return True
            time.sleep(0.005)
        return False

    # -- events (reflector threads) ------------------------------------------

    def _mark(self, ids: Iterable[Optional[SvcId]], trigger: Optional[float] = None) -> None:
        with self._cond:
            for s in ids:
                if s is None:
                    continue
                self._dirty.add(s)
                if trigger is not None and trigger >= self.started_wall:
                    t = self._triggers.setdefault(s, [])
                    if trigger not in t:
                        t.append(trigger)
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            self._cond.notify_all()

    def _synced_event(self, name: str) -> None:
        with self._cond:
            self._synced.add(name)
            self._full = True
            self.counts["relists"] += 1
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            self._cond.notify_all()

    def _on_service(self, e: Event) -> None:
        if e.type == "SYNCED":
            self._synced_event("services")
            return
        self.counts["service_events"] += 1
        self._mark([_service_id(e.key)])

    def _on_slice(self, e: Event) -> None:
        if e.type == "SYNCED":
            self._synced_event("endpointslices")
            return
        self.counts["endpointslice_events"] += 1
        key = e.key
        assert key is not None
        obj: Any = e.obj
        new_owner = None if e.type == "DELETED" else _owner_of(obj)
        old_owner = None if e.old is None else _owner_of(e.old)  # what the slice was filed under
        with self._cond:
            if old_owner is not None:
                keys = tuple(k for k in self._slices_of.get(old_owner, ()) if k != key)
                if keys:
                    self._slices_of[old_owner] = keys
                else:
                    self._slices_of.pop(old_owner, None)
            if new_owner is not None:
                self._slices_of[new_owner] = (*self._slices_of.get(new_owner, ()), key)
        self._mark({old_owner, new_owner}, None if e.type == "DELETED" else _trigger_time(e.obj))

    def _on_node(self, e: Event) -> None:
        if e.type == "SYNCED":
            self._synced_event("node")
            return
        self.counts["node_events"] += 1
        node = Node(self.node_name)
        if e.type != "DELETED" and e.obj is not None:
            try:
                node = Node.from_object(e.obj)
            except Exception as err:  # a malformed Node: keep the name, lose the zone
                logger.warning("node %s: cannot read the Node object (%s): no zone", self.node_name, err)
        with self._cond:
            changed = node != self.node
            self.node = node
            if changed:
                logger.info("node %s: zone %s", node.name, node.zone)
                self._full = True
                self._cond.notify_all()

    # -- applying (the agent's thread) ----------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set():
                    if self._gc_paused and time.monotonic() - self._started > self.gc_pause_max:
                        self._resume_gc()  # no first sync yet: not paused for longer than that
                    ready = {"services", "endpointslices"} <= self._synced and (
                        "node" in self._synced or time.monotonic() - self._started > self.node_timeout
                    )
                    work = ready and (self._dirty or self._full)
                    if work and self._full and any(r.listing for r in self._reflectors):
                        # Another resource is being listed again too (an API server restart,
                        # a compaction): one full sync after both, not one after each.
                        self._full_since = self._full_since or time.monotonic()
                        if time.monotonic() - self._full_since < self.max_full_delay:
                            self._cond.wait(0.05)
                            continue
                    self._full_since = 0.0
                    retry = ready and self._retry and time.monotonic() >= self._retry_at
                    if work or retry:
                        wait = self._last_apply_start + self.min_sync_period - time.monotonic()
                        if wait <= 0:
                            break
                    else:
                        wait = 1.0
                        if ready and self._retry:
                            wait = max(0.001, min(wait, self._retry_at - time.monotonic()))
                    self._cond.wait(wait)
                if self._stop.is_set():
                    return
                full, dirty, triggers = self._full, self._dirty, self._triggers
                self._full, self._dirty, self._triggers = False, set(), {}
                node = self.node
                self._busy = 1
            self._last_apply_start = time.monotonic()
            try:
                if full:
                    self._apply_full(node, triggers)
                else:
                    self._apply_dirty(dirty, node, triggers)
            except Exception:
                self.counts["apply_errors"] += 1
                logger.exception("applying changes failed; retrying")
                with self._cond:  # try the whole thing again
                    self._full = self._full or full
                    self._dirty |= dirty
                    for s, t in triggers.items():
                        self._triggers.setdefault(s, []).extend(t)
                self._stop.wait(self.retry_initial)
            finally:
                with self._cond:
                    self._busy = 0
                    if not self._dirty and not self._full and not self._retry:
                        self._pending_since = None  # everything seen is applied
