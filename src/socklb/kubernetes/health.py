"""The node agent's health and figures: kube-proxy's ``/healthz`` rule, the
statistics, and ``/metrics`` in the Prometheus text format (a part of
:class:`~socklb.kubernetes.agent.Agent`)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Set, Tuple

from socklb.kubernetes.reflector import Reflector
from socklb.kubernetes.translation import Node

__all__: List[str] = []


class Health:
    """``/healthz``, :meth:`stats` and :meth:`metrics` of the agent."""

    balancer: Any
    first_sync: threading.Event
    healthz_timeout: float
    last_apply_wall: Optional[float]
    node_name: str
    node: Node
    counts: Dict[str, int]
    programming_latency: Any
    apply_durations: Any
    full_sync_durations: Any
    _cond: threading.Condition
    _pending_since: Optional[float]
    _stop: threading.Event
    _dirty: Set[Tuple[str, str]]
    _full: bool
    _wanted: Dict[Any, Any]
    _claims: Dict[Any, Any]
    _no_local: Dict[Any, int]
    _retry: Set[Any]
    _reflectors: Tuple[Reflector, ...]
    _httpd: Optional[ThreadingHTTPServer]
    _http_thread: Optional[threading.Thread]

    # -- health and statistics --------------------------------------------------

    def healthy(self) -> Tuple[bool, Dict[str, Any]]:
        """kube-proxy's healthz rule: synced once, and no change waiting longer than ``healthz_timeout``."""
        now = time.monotonic()
        with self._cond:
            pending = self._pending_since
        stale = pending is not None and now - pending > self.healthz_timeout
        ok = self.first_sync.is_set() and not stale and not self._stop.is_set()
        last = self.last_apply_wall
        return ok, {
            "lastUpdated": _iso(last) if last else None,
            "currentTime": _iso(time.time()),
            "synced": self.first_sync.is_set(),
            "pendingSeconds": round(now - pending, 3) if pending is not None else 0.0,
            "nodeName": self.node_name,
            "nodeZone": self.node.zone,
        }

    def stats(self) -> Dict[str, Any]:
        """What the agent measured and counted (see the module documentation)."""
        with self._cond:
            pending = len(self._dirty) + (1 if self._full else 0)
        return {
            "network_programming_seconds": self.programming_latency.summary(),
            "apply_seconds": self.apply_durations.summary(),
            "full_sync_seconds": self.full_sync_durations.summary(),
            "last_apply_time": self.last_apply_wall,
            "services": len(self._wanted),
            "frontends": len(self._claims),
            "no_local_endpoints": sum(self._no_local.values()),
            "pending_changes": pending,
            "retrying": len(self._retry),
            "reflectors": {r.name: vars(r.stats).copy() for r in self._reflectors},
            **self.counts,
        }

    def metrics(self) -> str:
        """The statistics in the Prometheus text format (summaries with quantiles,
        counters), followed by the balancer's own metrics (:mod:`socklb.ops.metrics`)
        when ``socklb[metrics]`` is installed."""
        st = self.stats()
        lines: List[str] = []
        for name, key in (
            ("socklb_network_programming_duration_seconds", "network_programming_seconds"),
            ("socklb_sync_proxy_rules_duration_seconds", "apply_seconds"),
            ("socklb_sync_full_duration_seconds", "full_sync_seconds"),
        ):
            s = st[key]
            lines.append(f"# TYPE {name} summary")
            for q in ("p50", "p90", "p99"):
                if s[q] is not None:
                    lines.append(f'{name}{{quantile="0.{q[1:]}"}} {s[q]:.6f}')
            lines += [f"{name}_sum {s['sum']:.6f}", f"{name}_count {s['count']}"]
        for key in self.counts:
            lines += [f"# TYPE socklb_agent_{key}_total counter", f"socklb_agent_{key}_total {st[key]}"]
        for key in ("services", "frontends", "no_local_endpoints", "pending_changes"):
            lines += [f"# TYPE socklb_agent_{key} gauge", f"socklb_agent_{key} {st[key]}"]
        if st["last_apply_time"]:
            lines.append(f"socklb_sync_proxy_rules_last_timestamp_seconds {st['last_apply_time']:.3f}")
        text = "\n".join(lines) + "\n"
        from socklb.balancer import Balancer

        if not isinstance(self.balancer, Balancer):
            return text  # a stand-in (tests): no datapath to report
        try:
            from prometheus_client import generate_latest

            from socklb.ops import metrics as balancer_metrics
        except ImportError:  # without socklb[metrics]: the agent's own figures only
            return text
        # The balancer's datapath metrics (socklb.ops.metrics) on the same endpoint.
        return text + generate_latest(balancer_metrics.registry(self.balancer)).decode()

    @property
    def healthz_port(self) -> Optional[int]:
        """The port /healthz is served on (when asked for port 0, the one chosen)."""
        return self._httpd.server_address[1] if self._httpd is not None else None

    def _serve_health(self, address: str, port: int) -> None:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in ("/healthz", "/livez"):
                    ok, body = agent.healthy()
                    data, code, ctype = json.dumps(body).encode(), 200 if ok else 503, "application/json"
                elif path == "/metrics":
                    data, code, ctype = agent.metrics().encode(), 200, "text/plain; version=0.0.4"
                else:
                    data, code, ctype = b"not found\n", 404, "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((address, port), Handler)
        self._httpd.daemon_threads = True
        self._http_thread = threading.Thread(target=self._httpd.serve_forever, name="socklb-healthz", daemon=True)
        self._http_thread.start()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
