"""Prometheus metrics of a balancer (extra ``socklb[metrics]``, on prometheus-client).

:class:`SocklbCollector` reads, on every scrape, a :class:`~socklb.Balancer`
of this process or the balancer pinned in a directory by any process (read
only, no lock; see :mod:`socklb.ops.view`).  ``socklb exporter --pin-dir DIR
--port N`` serves it on ``/metrics``; :func:`start_http_server` embeds it in a
controller.

Metrics (prefix ``socklb_``):

=============================================== ========= ================================================
name                                            type      labels / meaning
=============================================== ========= ================================================
``socklb_up``                                   gauge     the pinned balancer could be read (a pin directory)
``socklb_translations_total``                   counter   ``hook``: connect, sendmsg, recvmsg, getpeername; ``family``
``socklb_refusals_total``                       counter   ``reason``: no_backend (ECONNREFUSED), no_socket_state
``socklb_retries_total``                        counter   picks retried because a list changed under them
``socklb_affinity_hits_total``                  counter   ClientIP affinity reused a backend
``socklb_sticky_hits_total``                    counter   unconnected UDP sockets that kept their backend
``socklb_services``                             gauge     ``protocol``, ``algorithm``
``socklb_backends``                             gauge     ``state``: active, terminating, quarantined, ...
``socklb_map_entries``                          gauge     ``map``
``socklb_map_capacity``                         gauge     ``map`` (max_entries)
``socklb_attachments``                          gauge     cgroups attached (pinned links)
``socklb_owner_pid``                            gauge     pid holding the pin lock (0: none)
``socklb_backend_selections_total``             counter   ``service``, ``backend`` (opt-in: per_backend)
``socklb_update_duration_seconds``              histogram upsert/remove/sync duration (a Balancer only)
``socklb_update_failures_total``                counter   updates that raised (a Balancer only)
``socklb_last_successful_update_timestamp_seconds`` gauge a Balancer only
``socklb_sockets_terminated_total{protocol}``   counter   sockets terminated on removed backends
``socklb_socket_states``                        gauge     a Balancer only, when socket_states=True
=============================================== ========= ================================================

Example::

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from socklb.ops.metrics import SocklbCollector
    >>> reg = CollectorRegistry()
    >>> reg.register(SocklbCollector("/sys/fs/bpf/my-controller"))    # doctest: +SKIP
    >>> print(generate_latest(reg).decode())                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple, Union
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("socklb.ops.metrics needs prometheus-client: pip install 'socklb[metrics]'") from e

from socklb.control.stats import WRITE_BUCKETS
from socklb.model import Service

if TYPE_CHECKING:
    from socklb.balancer import Balancer

__all__ = ["SocklbCollector", "start_http_server", "registry", "IDLE_TIMEOUT", "MAX_CONNECTIONS"]

log = logging.getLogger("socklb")

IDLE_TIMEOUT = 10.0
"""Seconds a connection may stay silent before the server closes it."""
MAX_CONNECTIONS = 16
"""Connections served at once; more are closed at once (a scraper retries)."""

_HOOKS = ("connect", "sendmsg", "recvmsg", "getpeername")


def _hp(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _svc_label(s: Service) -> str:
    return f"{_hp(s.address, s.port)}/{s.protocol.value}"


class SocklbCollector(Collector):
    """The metrics of one balancer: a :class:`~socklb.Balancer`, or a pin directory.

    :param per_backend: also export ``socklb_backend_selections_total`` per
        (service, backend): one series per backend, so off by default.
    :param socket_states: also count live socket states (a Balancer only; walks
        the sockets of the attached pods' namespaces on every scrape).
    """

    def __init__(self, source: Union[Balancer, str], *, per_backend: bool = False, socket_states: bool = False) -> None:
        self.source = source
        self.per_backend = per_backend
        self.socket_states = socket_states

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected on demand: never at registration

    def collect(self) -> Iterator[Metric]:
        if isinstance(self.source, str):
            # A pin directory read fresh on every scrape: an owner that
            # restarts (or a directory that goes) is followed.  A failed
            # read is socklb_up 0, not a failed scrape.
            try:
                got = list(self._from_pins(self.source))
            except Exception as e:  # any failed read (a directory removed under the scrape too)
                log.debug("socklb: reading %s failed: %s", self.source, e)
                got = []
            yield GaugeMetricFamily("socklb_up", "Whether the pinned balancer could be read.", 1 if got else 0)
            yield from got
        else:
            yield from self._from_balancer(self.source)

    # -- the two sources ----------------------------------------------------------

    def _from_pins(self, pin_dir: str) -> Iterator[Metric]:
        from socklb.ops.view import PinnedView

        with PinnedView(pin_dir) as v:
            counters = v.counters()
            views = v.service_views()
            usage = {k: u for k, u in v.map_usage().items() if u[0] is not None and u[1] > 0}
            links = len(v.links())
            owner = v.owner_pid() or 0
        services = [sv.service for sv in views]
        sel = {(_svc_label(sv.service), _hp(b.address, b.port)): b.selections or 0 for sv in views for b in sv.backends}
        yield from self._common(counters, services, usage, sel)
        yield GaugeMetricFamily("socklb_attachments", "Cgroups the balancer is attached to (pinned links).", links)
        yield GaugeMetricFamily("socklb_owner_pid", "Pid of the process that owns the pin directory (0: none).", owner)

    def _from_balancer(self, lb: Balancer) -> Iterator[Metric]:
        counters = lb.counters()
        services = lb.services()
        usage = {k: (float(n), float(cap)) for k, (n, cap) in lb.map_usage().items()}
        sel = {}
        by_key = {s.key: s for s in services}
        for key, per in lb.selections().items():
            s = by_key.get(key)
            if s is not None:
                for (addr, port), n in per.items():
                    sel[(_svc_label(s), _hp(addr, port))] = n
        yield from self._common(counters, services, usage, sel)
        yield GaugeMetricFamily("socklb_attachments", "Cgroups the balancer is attached to.", len(lb.attachments()))
        ws = lb.write_stats
        buckets: List[Tuple[str, float]] = [(repr(le), float(n)) for le, n in zip(WRITE_BUCKETS, ws.buckets)]
        buckets.append(("+Inf", float(ws.count)))
        yield HistogramMetricFamily(
            "socklb_update_duration_seconds",
            "Duration of the balancer's updates (upsert, remove, sync).",
            buckets=buckets,
            sum_value=ws.sum,
        )
        if ws.last_success is not None:
            yield GaugeMetricFamily(
                "socklb_last_successful_update_timestamp_seconds",
                "Unix time of the last update that succeeded.",
                ws.last_success,
            )
        c = CounterMetricFamily("socklb_update_failures", "Updates that raised.")
        c.add_metric([], ws.failures)
        yield c
        if self.socket_states:
            yield GaugeMetricFamily("socklb_socket_states", "Per-socket states socklb holds.", lb.socket_states())

    def _common(
        self,
        counters: Dict[str, int],
        services: List[Service],
        usage: Dict[str, Tuple[Any, Any]],
        sel: Dict[Tuple[str, str], int],
    ) -> Iterator[Metric]:
        tr = CounterMetricFamily(
            "socklb_translations",
            "Translations made by the datapath, by hook and the socket's family.",
            labels=["hook", "family"],
        )
        for h in _HOOKS:
            v6 = counters.get(h + "6", 0)
            tr.add_metric([h, "ipv4"], max(counters.get(h, 0) - v6, 0))
            tr.add_metric([h, "ipv6"], v6)
        yield tr
        rf = CounterMetricFamily("socklb_refusals", "Connects and datagrams refused, by reason.", labels=["reason"])
        rf.add_metric(["no_backend"], counters.get("no_backend", 0))
        rf.add_metric(["no_socket_state"], counters.get("no_state", 0))
        yield rf
        for name, key, doc in (
            ("socklb_retries", "retry", "Backend picks retried because the service's list changed under them."),
            ("socklb_affinity_hits", "affinity_hit", "Choices made by ClientIP session affinity."),
            ("socklb_sticky_hits", "sticky_hit", "Unconnected UDP datagrams that kept their socket's backend."),
            (
                "socklb_udp_flow_evictions",
                "udp_evicted",
                "Unconnected UDP flows a socket forgot for a newer one (more than udp_flows_per_socket).",
            ),
        ):
            m = CounterMetricFamily(name, doc)
            m.add_metric([], counters.get(key, 0))
            yield m
        t = CounterMetricFamily(
            "socklb_sockets_terminated",
            "Sockets terminated because their backend was removed or left the active state.",
            labels=["protocol"],
        )
        tcp = counters.get("terminated_tcp", 0)
        t.add_metric(["udp"], counters.get("terminated", 0) - tcp)
        t.add_metric(["tcp"], tcp)
        yield t
        sv = GaugeMetricFamily("socklb_services", "Services programmed.", labels=["protocol", "algorithm"])
        for (proto, algo), n in sorted(Counter((s.protocol.value, s.algorithm.value) for s in services).items()):
            sv.add_metric([proto, algo], n)
        yield sv
        be = GaugeMetricFamily("socklb_backends", "Service backends programmed, by state.", labels=["state"])
        states = Counter(b.state.value for s in services for b in s.backends)
        from socklb.model import BackendState

        for st in BackendState:
            be.add_metric([st.value], states.get(st.value, 0))
        yield be
        me = GaugeMetricFamily("socklb_map_entries", "Entries in use in each BPF map.", labels=["map"])
        mc = GaugeMetricFamily("socklb_map_capacity", "Capacity (max_entries) of each BPF map.", labels=["map"])
        for name, (n, cap) in sorted(usage.items()):
            me.add_metric([name], n)
            mc.add_metric([name], cap)
        yield me
        yield mc
        if self.per_backend:
            bs = CounterMetricFamily(
                "socklb_backend_selections", "Times the datapath chose each backend.", labels=["service", "backend"]
            )
            for (svc, b), n in sorted(sel.items()):
                bs.add_metric([svc, b], n)
            yield bs


def registry(source: Union[Balancer, str], *, per_backend: bool = False) -> CollectorRegistry:
    """A registry holding only socklb's collector for ``source``."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SocklbCollector(source, per_backend=per_backend))
    return reg


class _Handler(WSGIRequestHandler):
    """One connection: silent, and closed when idle for ``timeout`` seconds
    (StreamRequestHandler sets it on the socket)."""

    timeout = IDLE_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most ``max_connections`` at once: an idle
    connection times out instead of holding a thread forever, and one past
    the bound is closed at once."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out or went away: nothing to print


def start_http_server(
    balancer: Union[Balancer, str],
    port: int,
    addr: str = "127.0.0.1",
    *,
    per_backend: bool = False,
    registry_: Optional[CollectorRegistry] = None,
    idle_timeout: float = IDLE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> Tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` for ``balancer`` (or a pin directory) from a daemon
    thread, on ``addr`` (127.0.0.1 by default: node-wide data is not put on
    every interface unless asked).  With ``registry_`` the collector joins that
    registry (a controller's own metrics served alongside); otherwise a
    registry of its own is used.  A connection silent for ``idle_timeout``
    seconds is closed, and at most ``max_connections`` are served at once.
    Returns the server and its thread (``server.shutdown()`` stops it)."""
    if registry_ is None:
        reg = registry(balancer, per_backend=per_backend)
    else:
        reg = registry_
        reg.register(SocklbCollector(balancer, per_backend=per_backend))
    family, _, _, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(_Server):
        address_family = family

    Server.max_connections = max_connections

    class Handler(_Handler):
        timeout = idle_timeout

    httpd = Server((str(sockaddr[0]), port), Handler)
    httpd.set_app(make_wsgi_app(reg))
    t = threading.Thread(target=httpd.serve_forever, name="socklb-metrics", daemon=True)
    t.start()
    return httpd, t
