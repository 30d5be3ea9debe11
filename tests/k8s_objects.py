"""Kubernetes API objects (JSON form) for the agent's tests, and a recording stand-in for a Balancer."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from socklb.errors import NotFoundError
from socklb.model import Service, ServiceKey, normalize_key

Obj = Dict[str, Any]


def service(
    name: str,
    ip: Union[str, Sequence[str]],
    ports: Sequence[Tuple[str, int, str]] = (("http", 80, "TCP"),),
    ns: str = "default",
    labels: Optional[Dict[str, str]] = None,
    **spec: Any,
) -> Obj:
    ips = [ip] if isinstance(ip, str) else list(ip)
    meta: Obj = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
            **spec,
        },
    }


def endpoint(
    address: str,
    node: Optional[str] = None,
    ready: Optional[bool] = True,
    serving: Optional[bool] = None,
    terminating: Optional[bool] = None,
    zones: Iterable[str] = (),
    zone: Optional[str] = None,
) -> Obj:
    e: Obj = {"addresses": [address], "conditions": {}}
    for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating)):
        if v is not None:
            e["conditions"][k] = v
    if node is not None:
        e["nodeName"] = node
    if zone is not None:
        e["zone"] = zone
    z = list(zones)
    if z:
        e["hints"] = {"forZones": [{"name": n} for n in z]}
    return e


def rfc3339(t: float) -> str:
    """RFC3339Nano, as the EndpointSlice controller writes its trigger time."""
    d = datetime.fromtimestamp(t, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond:06d}000Z"


def eslice(
    name: str,
    svc: str,
    endpoints: Sequence[Obj],
    ports: Sequence[Tuple[str, int, str]] = (("http", 8080, "TCP"),),
    ns: str = "default",
    family: str = "IPv4",
    trigger: Optional[float] = None,
) -> Obj:
    meta: Obj = {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}}
    if trigger is not None:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": rfc3339(trigger)}
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": meta,
        "addressType": family,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        "endpoints": list(endpoints),
    }


def node(name: str, zone: Optional[str] = None, addresses: Sequence[Tuple[str, str]] = ()) -> Obj:
    """A Node; ``addresses`` are (type, address) pairs such as ("InternalIP", "192.0.2.4")."""
    meta: Obj = {"name": name}
    if zone is not None:
        meta["labels"] = {"topology.kubernetes.io/zone": zone}
    addrs = [{"type": t, "address": a} for t, a in addresses]
    return {"kind": "Node", "metadata": meta, "status": {"addresses": addrs}}


@dataclass
class Call:
    op: str  # "upsert", "remove", "sync"
    arg: Any
    at: float


@dataclass(frozen=True)
class FakeSyncResult:
    added: Tuple[ServiceKey, ...]
    updated: Tuple[ServiceKey, ...]
    removed: Tuple[ServiceKey, ...]


class RecordingBalancer:
    """What the agent needs of a Balancer (apply, sync, services), recorded; no kernel."""

    def __init__(self, fail: Iterable[ServiceKey] = ()) -> None:
        self.programmed: Dict[ServiceKey, Service] = {}
        self.calls: List[Call] = []
        self.fail = set(fail)
        self.lock = threading.Lock()
        self.node_addresses: List[List[str]] = []  # every set_node_addresses call
        self.batches: List[Tuple[List[Service], List[ServiceKey]]] = []  # every apply call

    def set_node_addresses(self, addresses: Iterable[str]) -> None:
        with self.lock:
            self.node_addresses.append(list(addresses))

    def refresh_node_addresses(self) -> List[str]:
        with self.lock:
            return list(self.node_addresses[-1]) if self.node_addresses else []

    def _check(self, key: ServiceKey) -> None:
        if key in self.fail:
            raise OSError(28, f"injected failure for {key}")

    def upsert(self, svc: Service) -> bool:
        with self.lock:
            self.calls.append(Call("upsert", svc, time.monotonic()))
            self._check(svc.key)
            changed = self.programmed.get(svc.key) != svc
            self.programmed[svc.key] = svc
            return changed

    def remove(self, key: Any) -> None:
        k = normalize_key(key)
        with self.lock:
            self.calls.append(Call("remove", k, time.monotonic()))
            self._check(k)
            if k not in self.programmed:
                raise NotFoundError(f"no service {k}")
            del self.programmed[k]

    def apply(
        self, upserts: Iterable[Service] = (), removals: Iterable[Any] = (), *, missing_ok: bool = False
    ) -> FakeSyncResult:
        """Balancer.apply: recorded as one upsert or remove call per service (one
        batch in ``batches``), all or nothing."""
        ups = list(upserts)
        rems = [normalize_key(k) for k in removals]
        with self.lock:
            now = time.monotonic()
            self.calls += [Call("upsert", s, now) for s in ups] + [Call("remove", k, now) for k in rems]
            self.batches.append((ups, rems))
            for k in [s.key for s in ups] + rems:
                self._check(k)
            missing = [k for k in rems if k not in self.programmed]
            if missing and not missing_ok:
                raise NotFoundError(f"no service {missing[0]}")
            added = tuple(s.key for s in ups if s.key not in self.programmed)
            updated = tuple(s.key for s in ups if s.key in self.programmed and self.programmed[s.key] != s)
            removed = tuple(k for k in rems if k in self.programmed)
            for s in ups:
                self.programmed[s.key] = s
            for k in removed:
                del self.programmed[k]
            return FakeSyncResult(added, updated, removed)

    def sync(self, services: Iterable[Service], batch: Optional[int] = None) -> FakeSyncResult:
        want = {s.key: s for s in services}
        with self.lock:
            self.calls.append(Call("sync", want, time.monotonic()))
            for k in want:
                self._check(k)
            added = tuple(k for k in want if k not in self.programmed)
            updated = tuple(k for k in want if k in self.programmed and self.programmed[k] != want[k])
            removed = tuple(k for k in self.programmed if k not in want)
            self.programmed = dict(want)
            return FakeSyncResult(added, updated, removed)

    def services(self) -> List[Service]:
        with self.lock:
            return list(self.programmed.values())

    def ops(self, *kinds: str) -> List[Call]:
        with self.lock:
            return [c for c in self.calls if not kinds or c.op in kinds]

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()

    def backends(self, key: ServiceKey) -> List[Tuple[str, int, str]]:
        with self.lock:
            svc = self.programmed.get(key)
            return [] if svc is None else sorted((b.address, b.port, b.state.value) for b in svc.backends)
