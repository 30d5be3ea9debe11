"""Service tables as kube-proxy writes them: iptables-restore input (iptables
mode) and ``nft -f`` input (nftables mode), and socklb ``Service`` values.

The layout follows kube-proxy (v1.28+ iptables proxier, v1.31 nftables
proxier): chain names are kube-proxy's hashes of the service port name,
rules carry the same matches, jumps, comments and masquerade marking, and
the top-level chains hang off the same hooks.  Only ClusterIP services are
generated (no NodePorts, external IPs or load balancers).

Example::

    >>> t = Table([Svc("bench", "svc-0", "10.96.0.1", 80, "tcp", (("10.244.2.2", 8080),))])
    >>> "KUBE-SVC-" in iptables_restore(t)
    True
    >>> "numgen random mod 1" in nft_ruleset(t)
    True
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

__all__ = [
    "Svc",
    "Table",
    "CLUSTER_CIDR",
    "SERVICE_CIDR",
    "iptables_restore",
    "iptables_partial",
    "iptables_flush",
    "nft_ruleset",
    "nft_service_update",
    "nft_transactions",
    "nft_delete",
    "vip",
]

#: Pod network (kube-proxy's --cluster-cidr): traffic from outside it is masqueraded.
CLUSTER_CIDR = "10.244.0.0/16"
#: Service network; also the lab's unreachable service range.
SERVICE_CIDR = "10.96.0.0/16"
MASQ_MARK = "0x4000"
NFT_TABLE = "kube-proxy"

Endpoint = Tuple[str, int]


@dataclass(frozen=True)
class Svc:
    """One service port: ``namespace/name`` with a ClusterIP, a port and endpoints."""

    namespace: str
    name: str
    ip: str
    port: int
    protocol: str  # "tcp" | "udp"
    endpoints: Tuple[Endpoint, ...]

    @property
    def port_name(self) -> str:
        """kube-proxy's ServicePortName string, ``ns/name:pPORT``."""
        return f"{self.namespace}/{self.name}:p{self.port}"


@dataclass(frozen=True)
class Table:
    services: Tuple[Svc, ...]

    def __init__(self, services: Iterable[Svc]) -> None:
        object.__setattr__(self, "services", tuple(services))


def vip(i: int) -> str:
    """The i-th service address (0-based) in 10.96.0.0/16, skipping 10.96.0.0."""
    if not 0 <= i < 65534:
        raise ValueError(f"service index {i} does not fit 10.96.0.0/16")
    return str(ipaddress.IPv4Address("10.96.0.1") + i)


def _b32(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


# --- iptables ----------------------------------------------------------------


def svc_chain(s: Svc) -> str:
    """``KUBE-SVC-`` + kube-proxy's portProtoHash."""
    return "KUBE-SVC-" + _b32(s.port_name + s.protocol)[:16]


def sep_chain(s: Svc, ep: Endpoint) -> str:
    """``KUBE-SEP-`` + kube-proxy's endpoint chain hash."""
    return "KUBE-SEP-" + _b32(s.port_name + s.protocol + f"{ep[0]}:{ep[1]}")[:16]


_FILTER_HEAD = [
    "*filter",
    ":INPUT ACCEPT [0:0]",
    ":FORWARD ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":KUBE-EXTERNAL-SERVICES - [0:0]",
    ":KUBE-FORWARD - [0:0]",
    ":KUBE-NODEPORTS - [0:0]",
    ":KUBE-PROXY-FIREWALL - [0:0]",
    ":KUBE-SERVICES - [0:0]",
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
    "-j KUBE-PROXY-FIREWALL",
    '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
    "-j KUBE-EXTERNAL-SERVICES",
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
    "-j KUBE-PROXY-FIREWALL",
    '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" '
    "-j KUBE-EXTERNAL-SERVICES",
    '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
    "-j KUBE-PROXY-FIREWALL",
    '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
    f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} '
    "-j ACCEPT",
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "COMMIT",
]

_NAT_BUILTIN = [
    ":PREROUTING ACCEPT [0:0]",
    ":INPUT ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
]
_NAT_BUILTIN_JUMPS = [
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
]
_NAT_FIXED_CHAINS = [":KUBE-MARK-MASQ - [0:0]", ":KUBE-NODEPORTS - [0:0]", ":KUBE-POSTROUTING - [0:0]"]
_NAT_FIXED_RULES = [
    f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
    f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
]
_NODEPORTS_LAST = (
    '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
    'this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
)


def _svc_jump(s: Svc) -> str:
    return (
        f'-A KUBE-SERVICES -m comment --comment "{s.port_name} cluster IP" -m {s.protocol} -p {s.protocol} '
        f"-d {s.ip}/32 --dport {s.port} -j {svc_chain(s)}"
    )


def _svc_rules(s: Svc) -> List[str]:
    c = svc_chain(s)
    out = [
        f'-A {c} -m comment --comment "{s.port_name} cluster IP" -m {s.protocol} -p {s.protocol} '
        f"-d {s.ip}/32 --dport {s.port} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
    ]
    n = len(s.endpoints)
    for i, ep in enumerate(s.endpoints):
        prob = "" if i == n - 1 else f"-m statistic --mode random --probability {1.0 / (n - i):0.10f} "
        out.append(f'-A {c} -m comment --comment "{s.port_name} -> {ep[0]}:{ep[1]}" {prob}-j {sep_chain(s, ep)}')
    return out


def _sep_rules(s: Svc, ep: Endpoint) -> List[str]:
    c = sep_chain(s, ep)
    return [
        f"-A {c} -m comment --comment {s.port_name} -s {ep[0]}/32 -j KUBE-MARK-MASQ",
        f"-A {c} -m comment --comment {s.port_name} -m {s.protocol} -p {s.protocol} "
        f"-j DNAT --to-destination {ep[0]}:{ep[1]}",
    ]


def iptables_restore(table: Table) -> str:
    """The whole ruleset for one ``iptables-restore`` (filter and nat tables),
    as kube-proxy's full sync writes it, plus the jumps from the built-in chains
    that kube-proxy installs separately."""
    chains: List[str] = []
    rules: List[str] = []
    jumps: List[str] = []
    for s in table.services:
        if not s.endpoints:
            continue
        chains.append(f":{svc_chain(s)} - [0:0]")
        chains.extend(f":{sep_chain(s, ep)} - [0:0]" for ep in s.endpoints)
        jumps.append(_svc_jump(s))
        rules.extend(_svc_rules(s))
        for ep in s.endpoints:
            rules.extend(_sep_rules(s, ep))
    nat = [
        "*nat",
        *_NAT_BUILTIN,
        ":KUBE-SERVICES - [0:0]",
        *_NAT_FIXED_CHAINS,
        *chains,
        *_NAT_BUILTIN_JUMPS,
        *_NAT_FIXED_RULES,
        *jumps,
        _NODEPORTS_LAST,
        *rules,
        "COMMIT",
    ]
    return "\n".join(_FILTER_HEAD + nat) + "\n"


def iptables_partial(table: Table, changed: Svc, old: Svc) -> str:
    """What kube-proxy's partial sync (``MinimizeIPTablesRestore``) writes with
    ``iptables-restore --noflush`` when ``old`` became ``changed``: the whole
    KUBE-SERVICES chain again, the changed service's chains, and ``-X`` for the
    endpoint chains that went away."""
    lines = ["*filter", ":KUBE-SERVICES - [0:0]", "COMMIT", "*nat", ":KUBE-SERVICES - [0:0]"]
    lines.append(f":{svc_chain(changed)} - [0:0]")
    lines.extend(f":{sep_chain(changed, ep)} - [0:0]" for ep in changed.endpoints)
    gone = [sep_chain(old, ep) for ep in old.endpoints if ep not in changed.endpoints]
    lines.extend(f":{c} - [0:0]" for c in gone)
    lines.extend(_svc_jump(s) for s in table.services if s.endpoints)
    lines.append(_NODEPORTS_LAST)
    lines.extend(_svc_rules(changed))
    for ep in changed.endpoints:
        lines.extend(_sep_rules(changed, ep))
    lines.extend(f"-X {c}" for c in gone)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def iptables_flush() -> str:
    """Input for ``iptables-restore`` that empties the filter and nat tables."""
    return "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\nCOMMIT\n"


# --- nftables ----------------------------------------------------------------


def _hash_truncate(name: str) -> str:
    """kube-proxy's nftables hashAndTruncate."""
    out = _b32(name)[:8] + "-" + name
    return out if len(out) <= 200 else out[:197] + "..."


def nft_service_chain(s: Svc) -> str:
    return "service-" + _hash_truncate(f"{s.namespace}/{s.name}/{s.protocol}/p{s.port}")


def nft_endpoint_chain(s: Svc, ep: Endpoint) -> str:
    return "endpoint-" + _hash_truncate(f"{s.namespace}/{s.name}/{s.protocol}/p{s.port}__{ep[0]}/{ep[1]}")


def _nft_base() -> List[str]:
    t = f"ip {NFT_TABLE}"
    return [
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f"add chain {t} mark-for-masquerade",
        f"add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"add chain {t} masquerading",
        f"add rule {t} masquerading mark and {MASQ_MARK} == 0 return",
        f"add rule {t} masquerading mark set mark xor {MASQ_MARK}",
        f"add rule {t} masquerading masquerade fully-random",
        f"add chain {t} services",
        f"add chain {t} service-endpoints-check",
        f"add chain {t} firewall-check",
        f"add chain {t} cluster-ips-check",
        f"add chain {t} filter-prerouting {{ type filter hook prerouting priority -110 ; }}",
        f"add rule {t} filter-prerouting ct state new jump firewall-check",
        f"add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}",
        f"add rule {t} filter-forward ct state new jump service-endpoints-check",
        f"add rule {t} filter-forward ct state new jump cluster-ips-check",
        f"add chain {t} filter-output {{ type filter hook output priority -110 ; }}",
        f"add rule {t} filter-output ct state new jump service-endpoints-check",
        f"add rule {t} filter-output ct state new jump cluster-ips-check",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add rule {t} nat-output jump services",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add rule {t} nat-prerouting jump services",
        f'add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}',
        f'add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of '
        'ClusterIPs"',
        f'add rule {t} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment "Drop traffic to unallocated '
        'ClusterIPs"',
        f"add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to services with no endpoints" ; }',
        f"add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        f"add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "destinations that are subject to LoadBalancerSourceRanges" ; }',
        f"add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f'add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}',
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport "
        "vmap @service-nodeports",
    ]


def _nft_service(s: Svc) -> List[str]:
    t = f"ip {NFT_TABLE}"
    sc = nft_service_chain(s)
    out = [
        f"add chain {t} {sc}",
        f"flush chain {t} {sc}",
        f"add rule {t} {sc} ip daddr {s.ip} {s.protocol} dport {s.port} ip saddr != {CLUSTER_CIDR} "
        "jump mark-for-masquerade",
    ]
    for ep in s.endpoints:
        ec = nft_endpoint_chain(s, ep)
        out += [
            f"add chain {t} {ec}",
            f"flush chain {t} {ec}",
            f"add rule {t} {ec} ip saddr {ep[0]} jump mark-for-masquerade",
            f"add rule {t} {ec} meta l4proto {s.protocol} dnat to {ep[0]}:{ep[1]}",
        ]
    vm = ", ".join(f"{i} : goto {nft_endpoint_chain(s, ep)}" for i, ep in enumerate(s.endpoints))
    out.append(f"add rule {t} {sc} numgen random mod {len(s.endpoints)} vmap {{ {vm} }}")
    return out


def _nft_elements(services: Sequence[Svc]) -> List[str]:
    t = f"ip {NFT_TABLE}"
    out: List[str] = []
    # Elements in batches: one "add element" line per 1000 keeps lines short.
    for i in range(0, len(services), 1000):
        chunk = [s for s in services[i : i + 1000] if s.endpoints]
        if not chunk:
            continue
        ips = sorted({s.ip for s in chunk})
        out.append(f"add element {t} cluster-ips {{ {', '.join(ips)} }}")
        out.append(
            f"add element {t} service-ips {{ "
            + ", ".join(f"{s.ip} . {s.protocol} . {s.port} : goto {nft_service_chain(s)}" for s in chunk)
            + " }"
        )
    return out


def nft_ruleset(table: Table) -> str:
    """The whole kube-proxy table for ``nft -f``, as its first full sync writes it."""
    lines = _nft_base()
    for s in table.services:
        if s.endpoints:
            lines.extend(_nft_service(s))
    lines.extend(_nft_elements(table.services))
    return "\n".join(lines) + "\n"


def nft_transactions(services: Sequence[Svc], per_transaction: int) -> List[str]:
    """The same table as :func:`nft_ruleset`, as ``nft -f`` inputs of at most
    ``per_transaction`` services each (the first one also creates the table).

    One transaction per service batch: the kernel names each anonymous set (one
    per service: the ``numgen`` vmap) by scanning the table's sets, and binds
    it by walking the whole transaction, so one transaction of N services costs
    O(N^2).
    """
    if per_transaction < 1:
        raise ValueError("per_transaction must be positive")
    out: List[str] = []
    for i in range(0, max(len(services), 1), per_transaction):
        chunk = services[i : i + per_transaction]
        lines = _nft_base() if i == 0 else []
        for s in chunk:
            if s.endpoints:
                lines.extend(_nft_service(s))
        lines.extend(_nft_elements(chunk))
        out.append("\n".join(lines) + "\n")
    return out


def nft_service_update(changed: Svc, old: Svc) -> str:
    """The transaction kube-proxy's nftables mode writes when ``old`` became
    ``changed``: new endpoint chains, the service chain rewritten, stale
    endpoint chains deleted."""
    t = f"ip {NFT_TABLE}"
    lines = _nft_service(changed)
    for ep in old.endpoints:
        if ep not in changed.endpoints:
            c = nft_endpoint_chain(old, ep)
            lines += [f"flush chain {t} {c}", f"delete chain {t} {c}"]
    return "\n".join(lines) + "\n"


def nft_delete() -> str:
    return f"delete table ip {NFT_TABLE}\n"


def endpoints_by_service(table: Table) -> Dict[str, Tuple[Endpoint, ...]]:
    return {s.port_name + "/" + s.protocol: s.endpoints for s in table.services}
