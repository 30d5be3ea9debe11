"""socklb's test kit: a lab of network namespaces and cgroups to balance in.

Not part of the core API (``import socklb`` never imports it): a kit for
tests, examples, benchmarks and ``socklb demo``, as
:mod:`socklb.kubernetes.testing` is for controllers.  A :class:`Lab` is a node
namespace whose service CIDRs are ``unreachable`` routes, with pods (a network
namespace and a cgroup each) wired to it; every packet stays inside the
namespaces it creates, and everything it makes is removed on exit.

- :mod:`socklb.testing.lab`: :class:`Lab`, :class:`Pod`, :class:`Sandbox`, cleanup;
- :mod:`socklb.testing.server`: the backend server (``name``, ``peer``, echo);
- :mod:`socklb.testing.client`: one-shot clients that report who answered;
- :mod:`socklb.testing.load`: a bounded continuous load from a pod;
- :mod:`socklb.testing.sidecar`: a toy REDIRECT sidecar;
- :mod:`socklb.testing.demo`: ``socklb demo``.
"""

from socklb.testing.errors import LabError
from socklb.testing.lab import (
    POD_CIDR4,
    POD_CIDR6,
    SERVICE_CIDR4,
    SERVICE_CIDR6,
    Lab,
    Node,
    Pod,
    Sandbox,
    cleanup_leftovers,
)

__all__ = [
    "POD_CIDR4",
    "POD_CIDR6",
    "SERVICE_CIDR4",
    "SERVICE_CIDR6",
    "Lab",
    "LabError",
    "Node",
    "Pod",
    "Sandbox",
    "cleanup_leftovers",
]
