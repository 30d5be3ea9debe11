"""The kinds and limits of socklb's values: protocols, algorithms, frontends,
backend states, and the bounds a :class:`~socklb.model.Service` is checked against."""

from __future__ import annotations

import enum
import ipaddress
from typing import Tuple, Union

__all__ = [
    "AFFINITY_DEFAULT",
    "AFFINITY_MAX",
    "AFFINITY_MIN",
    "MAX_BACKENDS_PER_SERVICE",
    "MAX_WEIGHT",
    "Algorithm",
    "BackendState",
    "Frontend",
    "IPAddress",
    "Protocol",
    "ServiceKey",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
ServiceKey = Tuple[str, int, str]
"""A service's identity: (VIP, port, protocol), as in ``Service.key``."""

MAX_WEIGHT = 65535
MAX_BACKENDS_PER_SERVICE = 65536
AFFINITY_MIN, AFFINITY_MAX, AFFINITY_DEFAULT = 1, 86400, 10800


class Protocol(str, enum.Enum):
    TCP = "tcp"
    UDP = "udp"


class Algorithm(str, enum.Enum):
    """How a service picks a backend for a new socket.

    ``random`` (the default): random in proportion to each backend's weight
    (an alias table: one draw and one map lookup; uniform at today's cost when
    all weights are equal; weight 0 drains a backend);
    ``weighted``: an alias of ``random``, kept so that existing callers work
    (both honour weights; the service remembers which name it was given);
    ``maglev``: Maglev consistent hashing of the socket, weighted, so a flow's
    choice survives changes to the backend set (about 1/N of flows move when one
    of N backends comes or goes).
    """

    RANDOM = "random"
    WEIGHTED = "weighted"
    MAGLEV = "maglev"


class Frontend(str, enum.Enum):
    """Where a service is reached.

    ``address``: at its own address and port (a ClusterIP, an external IP, a
    load balancer's IP): the default.
    ``node_port``: at its port on every address of the node, and on loopback
    from the node's own network namespace (a Kubernetes NodePort): its address
    is the unspecified one of its family (``0.0.0.0`` or ``::``), and a
    ``bind()`` of its port on the node is refused with ``EADDRINUSE``.
    ``host_port``: one port of the node to a pod (a Kubernetes hostPort): on
    every address of the node like a NodePort when its address is unspecified,
    else on that one address; binds are not refused.
    """

    ADDRESS = "address"
    NODE_PORT = "node_port"
    HOST_PORT = "host_port"


class BackendState(str, enum.Enum):
    """Kubernetes endpoint conditions, as socklb uses them.

    ``active`` backends are chosen; ``terminating`` ones only when a service has
    no active backend left; ``quarantined`` and ``maintenance`` ones are kept in
    the tables but never chosen.
    """

    ACTIVE = "active"
    TERMINATING = "terminating"
    QUARANTINED = "quarantined"
    MAINTENANCE = "maintenance"
