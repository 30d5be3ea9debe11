"""socklb for Kubernetes: Services and EndpointSlices to :class:`socklb.Service` values.

Install with the extra ``socklb[kubernetes]`` to pass the official client's model
objects; dicts in the API's JSON form need no extra package.  The core of socklb
never imports this package or ``kubernetes``.

>>> from socklb.kubernetes import Node, translate
>>> svc = {"metadata": {"name": "web", "namespace": "shop"},
...        "spec": {"clusterIP": "10.96.3.4", "ports": [{"port": 443}]}}
>>> [out] = translate([svc], [], Node("node-a"))
>>> out.key, out.backends                       # no endpoints: connections are refused
(('10.96.3.4', 443, 'tcp'), ())

See :mod:`socklb.kubernetes.translation` for the rules, and
:class:`socklb.kubernetes.Agent` (:mod:`socklb.kubernetes.agent`) for the node
agent that keeps a :class:`socklb.Balancer` programmed from the API server.
"""

from socklb.kubernetes import translation
from socklb.kubernetes.agent import Agent
from socklb.kubernetes.translation import *  # noqa: F403 - the translation's public names are the package's

__all__ = ["Agent", *translation.__all__]
