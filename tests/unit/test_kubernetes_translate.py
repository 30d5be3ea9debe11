"""socklb.kubernetes.translate: kube-proxy's rules, one table case per rule.  No root, no cluster."""

from __future__ import annotations

import copy
import doctest
import itertools
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from helpers import in_ci, program
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socklb import Affinity, BackendState, InvalidValueError, Service
from socklb.kubernetes import Node, translate, translate_with_notes
from socklb.kubernetes.translation import DEFAULT_EXTERNAL_IP_CIDRS

# The table's Services serve their externalIPs unless a case says otherwise
# (the default allow-list is empty: see the "externalIPs" cases).
EVERY_RANGE = ("0.0.0.0/0", "::/0")

NODE = Node("node-a", zone="zone-a")
Obj = Dict[str, Any]


def require_kubernetes() -> Any:
    """The official client, or a skip - a failure in CI, where nothing may skip."""
    try:
        import kubernetes
    except ImportError:
        if in_ci():
            pytest.fail("the kubernetes package is missing: install socklb[dev] (CI=true forbids skipping)")
        pytest.skip("the kubernetes package is not installed (pip install 'socklb[kubernetes]')")
    return kubernetes


# ---------------------------------------------------------------------------
# Builders of API objects in JSON form
# ---------------------------------------------------------------------------


def svc(
    name: str = "web",
    ns: str = "default",
    *,
    cluster_ip: Optional[str] = "10.96.0.20",
    cluster_ips: Optional[List[str]] = None,
    ports: Sequence[Obj] = ({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},),
    labels: Optional[Dict[str, str]] = None,
    **spec: Any,
) -> Obj:
    s: Obj = {"ports": list(ports)}
    if cluster_ip is not None:
        s["clusterIP"] = cluster_ip
    if cluster_ips is not None:
        s["clusterIPs"] = cluster_ips
    status = spec.pop("status", None)
    s.update(spec)
    meta: Obj = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    out: Obj = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": s}
    if status is not None:
        out["status"] = status
    return out


def ep(
    address: str,
    node: Optional[str] = None,
    *,
    ready: Optional[bool] = None,
    serving: Optional[bool] = None,
    terminating: Optional[bool] = None,
    zones: Sequence[str] = (),
    nodes: Sequence[str] = (),
    more: Sequence[str] = (),
) -> Obj:
    e: Obj = {"addresses": [address, *more]}
    cond = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating)) if v is not None}
    if cond:
        e["conditions"] = cond
    if node is not None:
        e["nodeName"] = node
    hints: Obj = {}
    if zones:
        hints["forZones"] = [{"name": z} for z in zones]
    if nodes:
        hints["forNodes"] = [{"name": n} for n in nodes]
    if hints:
        e["hints"] = hints
    return e


HTTP = ({"name": "http", "port": 8080, "protocol": "TCP"},)


def eps(
    name: str = "web-abc",
    service: Optional[str] = "web",
    *endpoints: Obj,
    ns: str = "default",
    address_type: str = "IPv4",
    ports: Sequence[Obj] = HTTP,
    labels: Optional[Dict[str, str]] = None,
) -> Obj:
    lab = dict(labels or {})
    if service is not None:
        lab["kubernetes.io/service-name"] = service
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": lab},
        "addressType": address_type,
        "ports": list(ports),
        "endpoints": list(endpoints),
    }


def view(services: Sequence[Service]) -> Dict[str, List[str]]:
    """{"10.96.0.20:80/tcp": ["10.244.1.1:8080", "10.244.1.2:8080 terminating"]}."""
    out: Dict[str, List[str]] = {}
    for s in services:
        key = str(s)
        assert key not in out, f"{key} is given twice"
        out[key] = sorted(
            f"[{b.address}]:{b.port}" if ":" in b.address else f"{b.address}:{b.port}"
            for b in s.backends
            if b.state is BackendState.ACTIVE
        ) + sorted(
            (f"[{b.address}]:{b.port}" if ":" in b.address else f"{b.address}:{b.port}") + f" {b.state.value}"
            for b in s.backends
            if b.state is not BackendState.ACTIVE
        )
    return out


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


@dataclass
class Case:
    rule: str
    services: List[Any]
    slices: List[Any]
    expect: Dict[str, List[str]]
    node: Node = NODE
    proxy_name: Optional[str] = None
    apply_etp: bool = False
    logged: Sequence[str] = ()  # substrings of log lines that must appear (all levels)
    no_local: Sequence[str] = ()  # str(Service) of frontends in no_local_endpoints
    kw: Dict[str, Any] = field(default_factory=dict)


WEB = "10.96.0.20:80/tcp"
A1, A2, A3, A4 = "10.244.1.1", "10.244.1.2", "10.244.2.1", "10.244.3.1"


def ready_slice(*addrs: str, **kw: Any) -> Obj:
    return eps("web-abc", "web", *[ep(a) for a in addrs], **kw)


CASES: List[Case] = [
    # --- Services skipped -------------------------------------------------
    Case(
        "skip service: clusterIP None (headless)", [svc(cluster_ip="None")], [ready_slice(A1)], {}, logged=["headless"]
    ),
    Case("skip service: clusterIP empty", [svc(cluster_ip="")], [ready_slice(A1)], {}, logged=["no clusterIP"]),
    Case("skip service: no clusterIP and no clusterIPs", [svc(cluster_ip=None)], [], {}, logged=["no clusterIP"]),
    Case(
        "skip service: clusterIPs [None] (headless, dual-stack form)",
        [svc(cluster_ip=None, cluster_ips=["None"])],
        [],
        {},
    ),
    Case(
        "skip service: type ExternalName",
        [svc(type="ExternalName", externalName="db.example.com")],
        [ready_slice(A1)],
        {},
        logged=["ExternalName"],
    ),
    Case(
        "skip service: service-proxy-name label and no proxy name configured",
        [svc(labels={"service.kubernetes.io/service-proxy-name": "other"})],
        [ready_slice(A1)],
        {},
        logged=["another proxy"],
    ),
    Case(
        "take service: service-proxy-name label equals the configured proxy name",
        [svc(labels={"service.kubernetes.io/service-proxy-name": "socklb"})],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"]},
        proxy_name="socklb",
    ),
    Case(
        "skip service: proxy name configured, Service without the label is kube-proxy's",
        [svc()],
        [ready_slice(A1)],
        {},
        proxy_name="socklb",
        logged=["not this proxy's 'socklb'"],
    ),
    Case(
        "skip service: service-proxy-name label names another proxy",
        [svc(labels={"service.kubernetes.io/service-proxy-name": "other"})],
        [ready_slice(A1)],
        {},
        proxy_name="socklb",
    ),
    Case(
        "skip service: label service.kubernetes.io/headless",
        [svc(labels={"service.kubernetes.io/headless": ""})],
        [ready_slice(A1)],
        {},
    ),
    # --- Slices skipped ---------------------------------------------------
    Case(
        "skip slice: label service.kubernetes.io/headless",
        [svc()],
        [ready_slice(A1, labels={"service.kubernetes.io/headless": ""})],
        {WEB: []},
        logged=["default/web-abc: skipped: label service.kubernetes.io/headless"],
    ),
    Case(
        "skip slice: no kubernetes.io/service-name label",
        [svc()],
        [eps("web-abc", None, ep(A1))],
        {WEB: []},
        logged=["no kubernetes.io/service-name label"],
    ),
    Case(
        "skip slice: addressType FQDN",
        [svc()],
        [eps("web-abc", "web", ep("db.example.com"), address_type="FQDN")],
        {WEB: []},
        logged=["addressType FQDN"],
    ),
    Case(
        "skip slice: it belongs to another Service or namespace",
        [svc()],
        [eps("api-1", "api", ep(A1)), eps("web-1", "web", ep(A2), ns="other")],
        {WEB: []},
    ),
    # --- Frontends --------------------------------------------------------
    Case(
        "frontends: every clusterIPs entry, each with endpoints of its family (dual-stack)",
        [svc(cluster_ips=["10.96.0.20", "fd00:96::20"])],
        [
            ready_slice(A1),
            eps("web-v6", "web", ep("fd00:244:1::1"), address_type="IPv6"),
        ],
        {WEB: [f"{A1}:8080"], "[fd00:96::20]:80/tcp": ["[fd00:244:1::1]:8080"]},
    ),
    Case(
        "frontends: an IPv6 frontend without IPv6 slices has no backends",
        [svc(cluster_ip="fd00:96::20")],
        [ready_slice(A1)],
        {"[fd00:96::20]:80/tcp": []},
    ),
    Case("frontends: clusterIP when clusterIPs is absent", [svc()], [ready_slice(A1)], {WEB: [f"{A1}:8080"]}),
    Case(
        "frontends: every externalIPs entry",
        [svc(externalIPs=["192.0.2.10", "2001:db8::10"])],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"], "192.0.2.10:80/tcp": [f"{A1}:8080"], "[2001:db8::10]:80/tcp": []},
    ),
    Case(
        "frontends: load-balancer ingress ip with ipMode VIP or unset; Proxy and hostname-only are not",
        [
            svc(
                type="LoadBalancer",
                status={
                    "loadBalancer": {
                        "ingress": [
                            {"ip": "198.51.100.1"},
                            {"ip": "198.51.100.2", "ipMode": "VIP"},
                            {"ip": "198.51.100.3", "ipMode": "Proxy"},
                            {"hostname": "lb.example.com"},
                        ]
                    }
                },
            )
        ],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"], "198.51.100.1:80/tcp": [f"{A1}:8080"], "198.51.100.2:80/tcp": [f"{A1}:8080"]},
        logged=["198.51.100.3 has ipMode Proxy"],
    ),
    Case(
        "frontends: every port on every frontend",
        [
            svc(
                ports=[{"name": "http", "port": 80}, {"name": "https", "port": 443}],
                externalIPs=["192.0.2.10"],
            )
        ],
        [ready_slice(A1, ports=[{"name": "http", "port": 8080}, {"name": "https", "port": 8443}])],
        {
            WEB: [f"{A1}:8080"],
            "10.96.0.20:443/tcp": [f"{A1}:8443"],
            "192.0.2.10:80/tcp": [f"{A1}:8080"],
            "192.0.2.10:443/tcp": [f"{A1}:8443"],
        },
    ),
    Case(
        "frontends: an address claimed by two Services goes to the first by namespace/name",
        [svc("zzz", externalIPs=["192.0.2.10"], cluster_ip="10.96.0.30"), svc("aaa", externalIPs=["192.0.2.10"])],
        [eps("aaa-1", "aaa", ep(A1)), eps("zzz-1", "zzz", ep(A2))],
        {WEB: [f"{A1}:8080"], "192.0.2.10:80/tcp": [f"{A1}:8080"], "10.96.0.30:80/tcp": [f"{A2}:8080"]},
        logged=["default/zzz: frontend 192.0.2.10:80/tcp is already default/aaa's"],
    ),
    Case(
        "frontends: the same address as externalIP and load-balancer IP is one frontend",
        [
            svc(
                type="LoadBalancer",
                externalIPs=["192.0.2.10"],
                status={"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
            )
        ],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"], "192.0.2.10:80/tcp": [f"{A1}:8080"]},
    ),
    Case(
        "frontends: an invalid address is skipped, the other frontends kept",
        [svc(externalIPs=["not-an-ip", "224.0.0.1", "192.0.2.10"])],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"], "192.0.2.10:80/tcp": [f"{A1}:8080"]},
        logged=["default/web: frontend 'not-an-ip' port 80/tcp", "224.0.0.1 is multicast (224.0.0.0/4)"],
    ),
    Case(
        "frontends: loopback, link-local, multicast and unspecified are never served (CVE-2020-8554)",
        [
            svc(cluster_ip="169.254.169.254", externalIPs=["127.0.0.1", "::1", "fe80::1", "0.0.0.0", "ff02::1"]),
            svc(
                "lb",
                cluster_ip="10.96.0.30",
                type="LoadBalancer",
                externalIPs=["192.0.2.10"],
                status={"loadBalancer": {"ingress": [{"ip": "169.254.169.254"}, {"ip": "127.0.0.53"}]}},
            ),
        ],
        [ready_slice(A1), eps("lb-1", "lb", ep(A2))],
        {"10.96.0.30:80/tcp": [f"{A2}:8080"], "192.0.2.10:80/tcp": [f"{A2}:8080"]},
        logged=[
            "default/web: frontend 169.254.169.254 is link-local (169.254.0.0/16)",
            "the cloud metadata server",
            "frontend 127.0.0.1 is loopback (127.0.0.0/8)",
            "frontend ::1 is loopback (::1)",
            "frontend fe80::1 is link-local (fe80::/10)",
            "frontend 0.0.0.0 is unspecified",
            "frontend ff02::1 is multicast (ff00::/8)",
            "default/lb: frontend 169.254.169.254 is link-local",
            "default/lb: frontend 127.0.0.53 is loopback",
            "CVE-2020-8554",
        ],
    ),
    Case(
        "externalIPs: none is served by default (CVE-2020-8554); load-balancer IPs are",
        [
            svc(
                type="LoadBalancer",
                externalIPs=["192.0.2.10"],
                status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "192.0.2.10"}]}},
            )
        ],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"], "198.51.100.1:80/tcp": [f"{A1}:8080"], "192.0.2.10:80/tcp": [f"{A1}:8080"]},
        logged=["frontend 192.0.2.10 is not in the allowed external-IP ranges"],
        kw={"external_ip_cidrs": DEFAULT_EXTERNAL_IP_CIDRS},
    ),
    Case(
        "externalIPs: served only inside external_ip_cidrs",
        [svc(externalIPs=["192.0.2.10", "198.51.100.5", "2001:db8::10", "2001:db9::1"])],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"], "192.0.2.10:80/tcp": [f"{A1}:8080"], "[2001:db8::10]:80/tcp": []},
        logged=[
            "frontend 198.51.100.5 is not in the allowed external-IP ranges",
            "frontend 2001:db9::1 is not in the allowed external-IP ranges",
        ],
        kw={"external_ip_cidrs": ["192.0.2.0/24", "2001:db8::/64"]},
    ),
    # --- Ports ------------------------------------------------------------
    Case(
        "ports: a Service port and a slice port join on (name, protocol)",
        [
            svc(
                ports=[
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ]
            )
        ],
        [
            ready_slice(
                A1,
                ports=[
                    {"name": "dns", "port": 5353, "protocol": "UDP"},
                    {"name": "dns", "port": 9999, "protocol": "TCP"},  # same name, other protocol
                    {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
                ],
            )
        ],
        {"10.96.0.20:53/udp": [f"{A1}:5353"], "10.96.0.20:53/tcp": [f"{A1}:5354"]},
    ),
    Case(
        "ports: the backend port is the slice's number (a named targetPort resolved by the controller)",
        [svc(ports=[{"name": "http", "port": 80, "targetPort": "web"}])],
        [ready_slice(A1, ports=[{"name": "http", "port": 8443, "protocol": "TCP"}])],
        {WEB: [f"{A1}:8443"]},
    ),
    Case(
        "ports: an unnamed Service port joins the unnamed slice port; protocol defaults to TCP on both sides",
        [svc(ports=[{"port": 80}])],
        [ready_slice(A1, ports=[{"port": 8080}])],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "ports: a slice port without a number is ignored",
        [svc(ports=[{"name": "http", "port": 80}, {"name": "x", "port": 81}])],
        [ready_slice(A1, ports=[{"name": "http", "port": 8080}, {"name": "x", "port": None}])],
        {WEB: [f"{A1}:8080"], "10.96.0.20:81/tcp": []},
        logged=["port x/TCP has no number"],
    ),
    Case(
        "ports: a Service port without a matching slice port has no backends",
        [svc(ports=[{"name": "metrics", "port": 9090}])],
        [ready_slice(A1)],
        {"10.96.0.20:9090/tcp": []},
    ),
    Case(
        "ports: SCTP is skipped with a log line, TCP and UDP balanced",
        [
            svc(
                ports=[
                    {"name": "a", "port": 80, "protocol": "TCP"},
                    {"name": "b", "port": 80, "protocol": "UDP"},
                    {"name": "c", "port": 80, "protocol": "SCTP"},
                ]
            )
        ],
        [
            ready_slice(
                A1,
                ports=[
                    {"name": "a", "port": 1, "protocol": "TCP"},
                    {"name": "b", "port": 2, "protocol": "UDP"},
                    {"name": "c", "port": 3, "protocol": "SCTP"},
                ],
            )
        ],
        {WEB: [f"{A1}:1"], "10.96.0.20:80/udp": [f"{A1}:2"]},
        logged=["default/web: port 80/SCTP skipped"],
    ),
    # --- Endpoints --------------------------------------------------------
    Case(
        "endpoints: all slices of a Service are merged",
        [svc()],
        [eps("web-1", "web", ep(A1)), eps("web-2", "web", ep(A2), ep(A3))],
        {WEB: [f"{A1}:8080", f"{A2}:8080", f"{A3}:8080"]},
    ),
    Case(
        "endpoints: deduplicated by address:port across slices",
        [svc()],
        [eps("web-1", "web", ep(A1), ep(A2)), eps("web-2", "web", ep(A2), ep(A1))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "endpoints: a duplicate keeps the first slice by name's copy",
        [svc()],
        [eps("web-2", "web", ep(A1, ready=False)), eps("web-1", "web", ep(A1, ready=True), ep(A2))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "endpoints: a duplicate that is on this node replaces the first copy (kube-proxy)",
        [svc()],
        [eps("web-1", "web", ep(A1, "node-b", ready=False)), eps("web-2", "web", ep(A1, "node-a", ready=True), ep(A2))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "endpoints: a slice with null endpoints or null ports adds nothing",
        [svc()],
        [
            {**ready_slice(A1), "endpoints": None},
            {**eps("web-2", "web", ep(A2)), "ports": None},
            eps("web-3", "web", ep(A3)),
        ],
        {WEB: [f"{A3}:8080"]},
    ),
    Case(
        "endpoints: only addresses[0] counts",
        [svc()],
        [eps("web-1", "web", ep(A1, more=[A2]))],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "endpoints: an address of the other family is dropped",
        [svc()],
        [eps("web-1", "web", ep(A1), ep("fd00:244::1"))],
        {WEB: [f"{A1}:8080"]},
        logged=["fd00:244::1 is IPv6 in an IPv4 slice: dropped"],
    ),
    Case(
        "endpoints: addresses are normalized before deduplication",
        [svc(cluster_ip="fd00:96::20")],
        [eps("w-1", "web", ep("fd00:244:0:0::1"), ep("FD00:244::1"), address_type="IPv6")],
        {"[fd00:96::20]:80/tcp": ["[fd00:244::1]:8080"]},
    ),
    # --- Conditions and the Cluster policy --------------------------------
    Case(
        "conditions: nil ready, serving and terminating mean a ready endpoint",
        [svc()],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "conditions: ready false with nil serving/terminating is not a backend",
        [svc()],
        [eps("web-1", "web", ep(A1, ready=False), ep(A2))],
        {WEB: [f"{A2}:8080"]},
    ),
    Case(
        "cluster policy: ready endpoints are ACTIVE; serving+terminating ones unused while any is ready",
        [svc()],
        [eps("web-1", "web", ep(A1), ep(A2, ready=False, serving=True, terminating=True))],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "cluster policy: with none ready, serving+terminating endpoints are TERMINATING (KEP-1669)",
        [svc()],
        [
            eps(
                "web-1",
                "web",
                ep(A1, ready=False, serving=True, terminating=True),
                ep(A2, ready=False, terminating=True),  # nil serving means serving
                ep(A3, ready=False, serving=False, terminating=True),  # not serving: never
                ep(A4, ready=False, serving=True, terminating=False),  # not ready, not terminating: never
            )
        ],
        {WEB: [f"{A1}:8080 terminating", f"{A2}:8080 terminating"]},
    ),
    Case(
        "cluster policy: no usable endpoint gives a Service without backends (ECONNREFUSED)",
        [svc()],
        [eps("web-1", "web", ep(A1, ready=False, serving=False, terminating=True))],
        {WEB: []},
    ),
    # --- internalTrafficPolicy / externalTrafficPolicy Local ---------------
    Case(
        "internal policy Local: only the ready endpoints on this node",
        [svc(internalTrafficPolicy="Local")],
        [eps("web-1", "web", ep(A1, "node-a"), ep(A2, "node-b"), ep(A3, "node-a", ready=False))],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "internal policy Local: local serving+terminating when no local endpoint is ready, even if remote ones are",
        [svc(internalTrafficPolicy="Local")],
        [eps("web-1", "web", ep(A1, "node-a", ready=False, serving=True, terminating=True), ep(A2, "node-b"))],
        {WEB: [f"{A1}:8080 terminating"]},
    ),
    Case(
        "internal policy Local: endpoints elsewhere but none here -> no backends, refused fast, noted",
        [svc(internalTrafficPolicy="Local")],
        [eps("web-1", "web", ep(A1, "node-b"), ep(A2))],  # nil nodeName is not local
        {WEB: []},
        no_local=[WEB],
        logged=["no endpoint on node node-a"],
    ),
    Case(
        "internal policy Local: no endpoints at all is a plain empty Service, not a no-local one",
        [svc(internalTrafficPolicy="Local")],
        [eps("web-1", "web", ep(A1, "node-b", ready=False, serving=False))],
        {WEB: []},
    ),
    Case(
        "internal policy Local ignores topology hints",
        [svc(internalTrafficPolicy="Local")],
        [eps("web-1", "web", ep(A1, "node-a", zones=["zone-b"]), ep(A2, "node-b", zones=["zone-a"]))],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "internal policy Local applies to clusterIPs only; external frontends use the cluster endpoints",
        [svc(internalTrafficPolicy="Local", externalIPs=["192.0.2.10"])],
        [eps("web-1", "web", ep(A1, "node-a"), ep(A2, "node-b"))],
        {WEB: [f"{A1}:8080"], "192.0.2.10:80/tcp": [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "external policy Local: node-originated traffic to external frontends uses the cluster endpoints (kube-proxy)",
        [
            svc(
                type="LoadBalancer",
                externalTrafficPolicy="Local",
                status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
            )
        ],
        [eps("web-1", "web", ep(A1, "node-a"), ep(A2, "node-b"))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"], "198.51.100.1:80/tcp": [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "external policy Local with apply_external_traffic_policy: local endpoints on external frontends",
        [
            svc(
                type="LoadBalancer",
                externalTrafficPolicy="Local",
                externalIPs=["192.0.2.10"],
                status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
            )
        ],
        [eps("web-1", "web", ep(A1, "node-b"), ep(A2, "node-b"))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"], "198.51.100.1:80/tcp": [], "192.0.2.10:80/tcp": []},
        apply_etp=True,
        no_local=["198.51.100.1:80/tcp", "192.0.2.10:80/tcp"],
    ),
    Case(
        "external policy Local is ignored on a ClusterIP Service, as by the API and kube-proxy",
        [svc(externalTrafficPolicy="Local", externalIPs=["192.0.2.10"])],
        [eps("web-1", "web", ep(A1, "node-b"))],
        {WEB: [f"{A1}:8080"], "192.0.2.10:80/tcp": [f"{A1}:8080"]},
        apply_etp=True,
    ),
    # --- NodePorts ---------------------------------------------------------
    Case(
        "nodePort: type NodePort gets a NodePort frontend on the node's addresses, with the cluster endpoints",
        [svc(type="NodePort", ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}])],
        [ready_slice(A1, A2)],
        {WEB: [f"{A1}:8080", f"{A2}:8080"], "0.0.0.0:30080/tcp": [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "nodePort: type LoadBalancer's nodePorts too, beside its load-balancer IPs",
        [
            svc(
                type="LoadBalancer",
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 31000}],
                status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
            )
        ],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"], "198.51.100.1:80/tcp": [f"{A1}:8080"], "0.0.0.0:31000/tcp": [f"{A1}:8080"]},
    ),
    Case(
        "nodePort: one NodePort per family of a dual-stack Service, each with its family's endpoints",
        [
            svc(
                type="NodePort",
                cluster_ips=["10.96.0.20", "fd00:96::20"],
                ports=[{"name": "http", "port": 80, "protocol": "UDP", "nodePort": 30053}],
            )
        ],
        [
            ready_slice(A1, ports=[{"name": "http", "port": 8080, "protocol": "UDP"}]),
            eps(
                "web-v6",
                "web",
                ep("fd00:244:1::1"),
                address_type="IPv6",
                ports=[{"name": "http", "port": 8080, "protocol": "UDP"}],
            ),
        ],
        {
            "10.96.0.20:80/udp": [f"{A1}:8080"],
            "[fd00:96::20]:80/udp": ["[fd00:244:1::1]:8080"],
            "0.0.0.0:30053/udp": [f"{A1}:8080"],
            "[::]:30053/udp": ["[fd00:244:1::1]:8080"],
        },
    ),
    Case(
        "nodePort: ignored on a ClusterIP Service, as by kube-proxy",
        [svc(ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}])],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "nodePort: allocateLoadBalancerNodePorts false: none allocated, none served",
        [svc(type="LoadBalancer", allocateLoadBalancerNodePorts=False)],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "nodePort: allocateLoadBalancerNodePorts false but a nodePort asked for explicitly: kept by the API, served",
        [
            svc(
                type="LoadBalancer",
                allocateLoadBalancerNodePorts=False,
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30090}],
            )
        ],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"], "0.0.0.0:30090/tcp": [f"{A1}:8080"]},
    ),
    Case(
        "nodePort: malformed nodePort: that NodePort is skipped, the port's other frontends stay",
        [svc(type="NodePort", ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 70000}])],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"]},
        logged=["nodePort must be an integer in 1..65535, not 70000: no NodePort for port 80"],
    ),
    Case(
        "nodePort: externalTrafficPolicy Local applies to it like an external IP (apply_external_traffic_policy)",
        [
            svc(
                type="NodePort",
                externalTrafficPolicy="Local",
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
            )
        ],
        [eps("web-1", "web", ep(A1, "node-a"), ep(A2, "node-b"))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"], "0.0.0.0:30080/tcp": [f"{A1}:8080"]},
        apply_etp=True,
    ),
    Case(
        "nodePort: externalTrafficPolicy Local, by default: node-originated traffic uses the cluster endpoints",
        [
            svc(
                type="NodePort",
                externalTrafficPolicy="Local",
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
            )
        ],
        [eps("web-1", "web", ep(A1, "node-a"), ep(A2, "node-b"))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"], "0.0.0.0:30080/tcp": [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "nodePort: the same nodePort claimed by two Services goes to the first by namespace/name",
        [
            svc("a", type="NodePort", ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]),
            svc(
                "b",
                cluster_ip="10.96.0.21",
                type="NodePort",
                ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
            ),
        ],
        [eps("a-1", "a", ep(A1)), eps("b-1", "b", ep(A2))],
        {WEB: [f"{A1}:8080"], "10.96.0.21:80/tcp": [f"{A2}:8080"], "0.0.0.0:30080/tcp": [f"{A1}:8080"]},
        logged=["frontend 0.0.0.0:30080/tcp is already default/a's: skipped"],
    ),
    # --- Topology ---------------------------------------------------------
    Case(
        "topology: node hints used when every ready endpoint has one and one names this node",
        [svc()],
        [
            eps(
                "web-1",
                "web",
                ep(A1, "node-a", nodes=["node-a"], zones=["zone-a"]),
                ep(A2, "node-b", nodes=["node-b"], zones=["zone-a"]),
                ep(A3, "node-c", ready=False),  # unready endpoints do not count
            )
        ],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "topology: node hints ignored when a ready endpoint lacks one; zone hints then",
        [svc()],
        [
            eps(
                "web-1",
                "web",
                ep(A1, nodes=["node-a"], zones=["zone-b"]),
                ep(A2, zones=["zone-a"]),
                ep(A3, nodes=["node-c"], zones=["zone-c"]),
            )
        ],
        {WEB: [f"{A2}:8080"]},
    ),
    Case(
        "topology: node hints naming no endpoint for this node are ignored; zone hints then",
        [svc()],
        [eps("web-1", "web", ep(A1, nodes=["node-b"], zones=["zone-a"]), ep(A2, nodes=["node-c"], zones=["zone-b"]))],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "topology: zone hints used when every ready endpoint has one and one names this zone",
        [svc()],
        [eps("web-1", "web", ep(A1, zones=["zone-a"]), ep(A2, zones=["zone-b"]), ep(A3, zones=["zone-a", "zone-c"]))],
        {WEB: [f"{A1}:8080", f"{A3}:8080"]},
    ),
    Case(
        "topology: zone hints ignored when a ready endpoint lacks one",
        [svc()],
        [eps("web-1", "web", ep(A1, zones=["zone-a"]), ep(A2))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "topology: zone hints ignored when none names this node's zone",
        [svc()],
        [eps("web-1", "web", ep(A1, zones=["zone-b"]), ep(A2, zones=["zone-c"]))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"]},
    ),
    Case(
        "topology: a node without a zone label ignores zone hints",
        [svc()],
        [eps("web-1", "web", ep(A1, zones=["zone-a"]), ep(A2, zones=["zone-b"]))],
        {WEB: [f"{A1}:8080", f"{A2}:8080"]},
        node=Node("node-a"),
    ),
    Case(
        "topology: unready endpoints without hints do not stop the zone filter",
        [svc()],
        [eps("web-1", "web", ep(A1, zones=["zone-a"]), ep(A2, zones=["zone-b"]), ep(A3, ready=False))],
        {WEB: [f"{A1}:8080"]},
    ),
    Case(
        "topology: the serving+terminating fallback ignores hints",
        [svc()],
        [
            eps(
                "web-1",
                "web",
                ep(A1, ready=False, terminating=True, zones=["zone-a"]),
                ep(A2, ready=False, terminating=True, zones=["zone-b"]),
            )
        ],
        {WEB: [f"{A1}:8080 terminating", f"{A2}:8080 terminating"]},
    ),
    # --- Malformed objects ------------------------------------------------
    Case(
        "malformed: a Service without metadata.name is skipped, naming its position; others kept",
        [{"metadata": {}, "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 1}]}}, svc()],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"]},
        logged=["Service #0 of the Services given: skipped: metadata.name is missing"],
    ),
    Case(
        "malformed: spec not an object",
        [{"metadata": {"name": "x", "namespace": "default"}, "spec": "nope"}, svc()],
        [ready_slice(A1)],
        {WEB: [f"{A1}:8080"]},
        logged=["default/x: skipped: spec must be an object, not 'nope'"],
    ),
    Case(
        "malformed: a Service port that is not an integer in 1..65535 is skipped, other ports kept",
        [svc(ports=[{"name": "http", "port": "80"}, {"name": "big", "port": 70000}, {"name": "ok", "port": 81}])],
        [ready_slice(A1, ports=[{"name": "ok", "port": 8081}])],
        {"10.96.0.20:81/tcp": [f"{A1}:8081"]},
        logged=["spec.ports[0].port must be an integer in 1..65535, not '80'", "not 70000"],
    ),
    Case(
        "malformed: an unknown protocol skips that port",
        [svc(ports=[{"port": 80, "protocol": "QUIC"}])],
        [],
        {},
        logged=["'QUIC' is not TCP, UDP or SCTP"],
    ),
    Case(
        "malformed: a clusterIP that is not an address skips that frontend",
        [svc(cluster_ip="10.96.0.300")],
        [ready_slice(A1)],
        {},
        logged=["frontend '10.96.0.300'"],
    ),
    Case(
        "malformed: unknown internalTrafficPolicy skips the Service",
        [svc(internalTrafficPolicy="Nearby"), svc("ok", cluster_ip="10.96.0.21")],
        [],
        {"10.96.0.21:80/tcp": []},
        logged=["default/web: skipped: spec.internalTrafficPolicy must be Cluster or Local"],
    ),
    Case(
        "malformed: unknown sessionAffinity skips the Service",
        [svc(sessionAffinity="Cookie")],
        [],
        {},
        logged=["spec.sessionAffinity must be None or ClientIP"],
    ),
    Case(
        "malformed: affinity timeoutSeconds out of 1..86400 skips the Service",
        [svc(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}})],
        [],
        {},
        logged=["timeoutSeconds"],
    ),
    Case(
        "malformed: a slice whose endpoints are not a list is skipped, the other slices kept",
        [svc()],
        [{**ready_slice(A1), "endpoints": {"a": 1}}, eps("web-2", "web", ep(A2))],
        {WEB: [f"{A2}:8080"]},
        logged=["EndpointSlice default/web-abc: skipped: endpoints must be a list"],
    ),
    Case(
        "malformed: a slice with an unknown addressType is skipped",
        [svc()],
        [eps("web-1", "web", ep(A1), address_type="IPv5")],
        {WEB: []},
        logged=["addressType must be IPv4, IPv6 or FQDN"],
    ),
    Case(
        "malformed: an endpoint with no addresses is skipped, the others kept",
        [svc()],
        [eps("web-1", "web", {"addresses": []}, {"conditions": {}}, ep(A1))],
        {WEB: [f"{A1}:8080"]},
        logged=["endpoints[0].addresses is empty", "endpoints[1].addresses is empty"],
    ),
    Case(
        "malformed: an endpoint whose address is not an IP is skipped",
        [svc()],
        [eps("web-1", "web", ep("10.244.1"), ep("0.0.0.0"), ep(A1))],
        {WEB: [f"{A1}:8080"]},
        logged=["endpoints[0] '10.244.1'", "endpoints[1] '0.0.0.0'"],
    ),
    Case(
        "malformed: an IPv4-mapped IPv6 endpoint is skipped (socklb values refuse it)",
        [svc(cluster_ip="fd00:96::20")],
        [eps("web-1", "web", ep("::ffff:10.244.1.1"), ep("fd00:244::1"), address_type="IPv6")],
        {"[fd00:96::20]:80/tcp": ["[fd00:244::1]:8080"]},
        logged=["IPv4-mapped"],
    ),
    Case(
        "malformed: a condition that is not a bool skips the endpoint",
        [svc()],
        [eps("web-1", "web", {"addresses": [A1], "conditions": {"ready": "true"}}, ep(A2))],
        {WEB: [f"{A2}:8080"]},
        logged=["endpoints[0].conditions.ready must be true, false or null"],
    ),
    Case(
        "malformed: hints that are not a list skip the endpoint",
        [svc()],
        [eps("web-1", "web", {"addresses": [A1], "hints": {"forZones": "zone-a"}}, ep(A2))],
        {WEB: [f"{A2}:8080"]},
        logged=["endpoints[0].hints.forZones must be a list"],
    ),
    Case(
        "malformed: a slice port out of range is skipped, other ports kept",
        [svc(ports=[{"name": "http", "port": 80}, {"name": "x", "port": 81}])],
        [ready_slice(A1, ports=[{"name": "http", "port": 0}, {"name": "x", "port": 8081}])],
        {WEB: [], "10.96.0.20:81/tcp": [f"{A1}:8081"]},
        logged=["ports[0].port must be an integer in 1..65535, not 0"],
    ),
    Case(
        "malformed: objects that are not API objects, or of another kind, are skipped",
        [42, "web", None, {"kind": "Pod", "metadata": {"name": "p"}}, svc()],
        [eps("web-1", "web", ep(A1)), svc()],
        {WEB: [f"{A1}:8080"]},
        logged=["not an API object (int)", "kind is 'Pod', not Service", "kind is 'Service', not EndpointSlice"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
def test_rule(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="socklb.kubernetes")
    t = translate_with_notes(
        copy.deepcopy(case.services),
        copy.deepcopy(case.slices),
        case.node,
        case.proxy_name,
        apply_external_traffic_policy=case.apply_etp,
        **{"external_ip_cidrs": EVERY_RANGE, **case.kw},
    )
    assert view(t.services) == case.expect
    lines = [r.getMessage() for r in caplog.records if r.name == "socklb.kubernetes"]
    for want in case.logged:
        assert any(want in line for line in lines), f"no log line contains {want!r}: {lines}"
    assert [str(n) for n in t.notes] == lines  # every note is logged, and only notes are
    assert sorted(
        f"{k[0] if ':' not in k[0] else '[' + k[0] + ']'}:{k[1]}/{k[2]}" for k in t.no_local_endpoints
    ) == sorted(case.no_local)


def test_external_ips_are_denied_unless_allowed() -> None:
    services, slices = [svc(externalIPs=["192.0.2.10"])], [ready_slice(A1)]
    assert [s.address for s in translate(services, slices, NODE)] == ["10.96.0.20"]
    allowed = translate(services, slices, NODE, external_ip_cidrs=["192.0.2.10"])
    assert [s.address for s in allowed] == ["10.96.0.20", "192.0.2.10"]


@pytest.mark.parametrize("cidrs", [["192.0.2.0/33"], ["web"], "192.0.2.0/24", [24]])
def test_a_bad_external_ip_range_raises(cidrs: Any) -> None:
    with pytest.raises(InvalidValueError, match="external_ip_cidrs"):
        translate([svc()], [], NODE, external_ip_cidrs=cidrs)


def test_rule_names_are_unique() -> None:
    names = [c.rule for c in CASES]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------------------
# Rules outside the table
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"sessionAffinity": "ClientIP"}, Affinity(10800)),
        ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {}}}, Affinity(10800)),
        ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}, Affinity(60)),
        (
            {"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}},
            Affinity(86400),
        ),
        ({"sessionAffinity": "None"}, None),
        ({}, None),
    ],
    ids=["ClientIP default 10800", "ClientIP empty config", "ClientIP 60 s", "ClientIP max 86400", "None", "unset"],
)
def test_affinity(spec: Obj, expected: Optional[Affinity]) -> None:
    """Rule: sessionAffinity ClientIP -> Affinity(timeoutSeconds or 10800), on every frontend."""
    out = translate([svc(externalIPs=["192.0.2.10"], **spec)], [ready_slice(A1)], NODE, external_ip_cidrs=EVERY_RANGE)
    assert [s.affinity for s in out] == [expected, expected]


def test_algorithm_is_given_to_every_service() -> None:
    out = translate([svc(externalIPs=["192.0.2.10"])], [ready_slice(A1)], NODE, algorithm="maglev")
    assert {s.algorithm.value for s in out} == {"maglev"}


def test_node_may_be_a_name() -> None:
    assert view(translate([svc(internalTrafficPolicy="Local")], [eps("w", "web", ep(A1, "node-a"))], "node-a")) == {
        WEB: [f"{A1}:8080"]
    }


def test_output_does_not_depend_on_input_order() -> None:
    """Rule: slices are merged deterministically (first by name) and Services ordered by namespace/name."""
    services = [svc("b", cluster_ip="10.96.0.2", externalIPs=["192.0.2.1"]), svc("a", externalIPs=["192.0.2.1"])]
    slices = [
        eps("a-2", "a", ep(A1, ready=False)),
        eps("a-1", "a", ep(A1), ep(A2)),
        eps("b-1", "b", ep(A3)),
    ]
    results = {
        tuple(translate(list(ss), list(es), NODE))
        for ss in itertools.permutations(services)
        for es in itertools.permutations(slices)
    }
    assert len(results) == 1


def test_list_objects_are_accepted() -> None:
    """Inputs may be whole List objects, as `kubectl get services,endpointslices -o json` per kind prints them."""
    out = translate(
        {"kind": "ServiceList", "items": [svc()]}, {"kind": "EndpointSliceList", "items": [ready_slice(A1)]}, NODE
    )
    assert view(out) == {WEB: [f"{A1}:8080"]}


def test_inputs_are_not_modified() -> None:
    services, slices = [svc(externalIPs=["192.0.2.10"])], [ready_slice(A1)]
    before = copy.deepcopy((services, slices))
    translate(services, slices, NODE)
    assert (services, slices) == before


def test_node_values() -> None:
    assert Node("n", zone="").zone is None
    listed = Node("n", addresses=["192.168.0.1"])  # type: ignore[arg-type]  # a list is accepted, kept as a tuple
    assert listed.addresses == ("192.168.0.1",)
    for bad in ({"name": ""}, {"name": 3}, {"name": "n", "zone": 1}, {"name": "n", "addresses": "1.2.3.4"}):
        with pytest.raises(InvalidValueError):
            Node(**bad)
    with pytest.raises(InvalidValueError, match=r"metadata\.name"):
        Node.from_object({"metadata": {}})
    with pytest.raises(InvalidValueError, match="not a Node"):
        Node.from_object(7)


# ---------------------------------------------------------------------------
# The official client's model objects
# ---------------------------------------------------------------------------


def _model(cls: Any, **fields: Any) -> Any:
    """A client model from camelCase field names (the Python names changed between client versions)."""
    python_name = {camel: name for name, camel in cls.attribute_map.items()}
    return cls(**{python_name[k]: v for k, v in fields.items()})


def _models(kubernetes: Any) -> Tuple[List[Any], List[Any], List[Obj], List[Obj]]:
    c = kubernetes.client
    services = [
        c.V1Service(
            metadata=c.V1ObjectMeta(name="web", namespace="default"),
            spec=_model(
                c.V1ServiceSpec,
                type="LoadBalancer",
                clusterIP="10.96.0.20",
                clusterIPs=["10.96.0.20", "fd00:96::20"],  # Python name differs between client versions
                externalIPs=["192.0.2.10"],
                internalTrafficPolicy="Local",
                sessionAffinity="ClientIP",
                sessionAffinityConfig=c.V1SessionAffinityConfig(client_ip=c.V1ClientIPConfig(timeout_seconds=30)),
                ports=[c.V1ServicePort(name="http", port=80, protocol="TCP", target_port="web")],
            ),
            status=c.V1ServiceStatus(
                load_balancer=c.V1LoadBalancerStatus(
                    ingress=[c.V1LoadBalancerIngress(ip="198.51.100.1", ip_mode="VIP")]
                )
            ),
        )
    ]
    slices = [
        c.V1EndpointSlice(
            metadata=c.V1ObjectMeta(name="web-1", namespace="default", labels={"kubernetes.io/service-name": "web"}),
            address_type="IPv4",
            ports=[c.DiscoveryV1EndpointPort(name="http", port=8080, protocol="TCP")],
            endpoints=[
                c.V1Endpoint(addresses=[A1], node_name="node-a", conditions=c.V1EndpointConditions(ready=True)),
                c.V1Endpoint(
                    addresses=[A2],
                    node_name="node-b",
                    hints=c.V1EndpointHints(
                        for_zones=[c.V1ForZone(name="zone-a")], for_nodes=[c.V1ForNode(name="node-b")]
                    ),
                ),
                c.V1Endpoint(
                    addresses=[A3],
                    node_name="node-a",
                    conditions=c.V1EndpointConditions(ready=False, serving=True, terminating=True),
                ),
            ],
        )
    ]
    as_json = [
        svc(
            type="LoadBalancer",
            cluster_ips=["10.96.0.20", "fd00:96::20"],
            externalIPs=["192.0.2.10"],
            internalTrafficPolicy="Local",
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}},
            ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}],
            status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1", "ipMode": "VIP"}]}},
        )
    ]
    json_slices = [
        eps(
            "web-1",
            "web",
            ep(A1, "node-a", ready=True),
            ep(A2, "node-b", zones=["zone-a"], nodes=["node-b"]),
            ep(A3, "node-a", ready=False, serving=True, terminating=True),
        )
    ]
    return services, slices, as_json, json_slices


def test_official_client_models_give_what_their_json_gives() -> None:
    """Rule: inputs may be the official client's model objects (converted with sanitize_for_serialization)."""
    kubernetes = require_kubernetes()
    services, slices, as_json, json_slices = _models(kubernetes)
    from_models = translate(services, slices, NODE, external_ip_cidrs=EVERY_RANGE)
    assert from_models == translate(as_json, json_slices, NODE, external_ip_cidrs=EVERY_RANGE)
    assert view(from_models) == {
        WEB: [f"{A1}:8080"],
        "[fd00:96::20]:80/tcp": [],
        "192.0.2.10:80/tcp": [f"{A1}:8080", f"{A2}:8080"],
        "198.51.100.1:80/tcp": [f"{A1}:8080", f"{A2}:8080"],
    }
    assert {s.affinity for s in from_models} == {Affinity(30)}
    c = kubernetes.client
    as_list = translate(
        c.V1ServiceList(items=services), c.V1EndpointSliceList(items=slices), NODE, external_ip_cidrs=EVERY_RANGE
    )
    assert as_list == from_models
    node = Node.from_object(
        c.V1Node(
            metadata=c.V1ObjectMeta(name="node-a", labels={"topology.kubernetes.io/zone": "zone-a"}),
            status=c.V1NodeStatus(addresses=[c.V1NodeAddress(type="InternalIP", address="192.168.0.4")]),
        )
    )
    assert node == Node("node-a", "zone-a", ("192.168.0.4",))


def test_the_core_and_dict_inputs_do_not_import_kubernetes() -> None:
    subprocess.run([sys.executable, program("core_without_kubernetes")], check=True)


# ---------------------------------------------------------------------------
# Never raising
# ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(["", "None", "TCP", "IPv4", "10.0.0.1", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "port", "ip", "a"]), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(obj: Any, prefix: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _replace(obj: Any, path: Tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    obj = copy.deepcopy(obj)
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj


_GOOD_SVC = svc(
    type="LoadBalancer",
    cluster_ips=["10.96.0.20", "fd00:96::20"],
    externalIPs=["192.0.2.10"],
    internalTrafficPolicy="Local",
    sessionAffinity="ClientIP",
    sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}},
    status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
)
_GOOD_SLICE = eps("web-1", "web", ep(A1, "node-a", ready=True, zones=["zone-a"], nodes=["node-a"]), ep(A2, "node-b"))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_malformed_objects_never_raise_and_never_remove_other_services(data: st.DataObject) -> None:
    """Rule: any field of a Service or a slice replaced by any JSON value: no exception, and a second,
    well-formed Service is translated exactly as without the broken objects."""
    which = data.draw(st.sampled_from(["service", "slice"]))
    good = _GOOD_SVC if which == "service" else _GOOD_SLICE
    path = data.draw(st.sampled_from(_paths(good)))
    broken = _replace(good, path, data.draw(json_values))
    other = svc("other", cluster_ip="10.96.0.99", externalIPs=[])
    other_slice = eps("other-1", "other", ep(A3))
    services = [broken if which == "service" else _GOOD_SVC, other]
    slices = [broken if which == "slice" else _GOOD_SLICE, other_slice]
    out = translate(services, slices, NODE)
    assert [s for s in out if s.address == "10.96.0.99"] == translate([other], [other_slice], NODE)


def test_docstring_examples() -> None:
    import socklb.kubernetes
    import socklb.kubernetes.reflector
    import socklb.kubernetes.testing
    import socklb.kubernetes.translation

    modules = [socklb.kubernetes, socklb.kubernetes.translation, socklb.kubernetes.testing, socklb.kubernetes.reflector]
    for module in modules:
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_the_command_checks_its_external_ip_ranges(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """socklb kubernetes --external-ip-cidrs: checked before anything is loaded or contacted."""
    from socklb.cli import _translate_options, main, parser

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    argv = ["kubernetes", "--node-name", "n1", "--cgroup", "/nonexistent"]
    assert main([*argv, "--external-ip-cidrs", "192.0.2.0/24,web"]) == 2
    err = capsys.readouterr().err
    assert "--external-ip-cidrs" in err and "external_ip_cidrs[1]" in err and "'web'" in err
    assert parser().parse_args(argv).external_ip_cidrs == ""  # the default: no externalIP served

    args = parser().parse_args([*argv, "--external-ip-cidrs", "192.0.2.0/24, 2001:db8::/64"])
    got = _translate_options(args)
    assert got is not None and [str(n) for n in got["external_ip_cidrs"]] == ["192.0.2.0/24", "2001:db8::/64"]
    assert _translate_options(parser().parse_args(argv)) == {"external_ip_cidrs": ()}
