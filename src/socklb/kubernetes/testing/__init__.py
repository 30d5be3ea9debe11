"""A Kubernetes API server test double that speaks the real list/watch protocol over HTTP.

No real kube-apiserver can be installed from Debian, PyPI or npm, so socklb's
agent - and your own controllers - are tested against this: an
``http.server`` on 127.0.0.1 that serves Services, EndpointSlices and Nodes the
way the API server does, to the official ``kubernetes`` client (or any other):

- ``GET`` of a collection (cluster-wide or in a namespace) with ``limit`` and
  ``continue`` (a consistent snapshot across pages, ``remainingItemCount``),
  ``labelSelector`` (``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``) and
  ``fieldSelector`` (``metadata.name``, ``metadata.namespace``);
- ``GET`` of one object (``/api/v1/nodes/node-a``);
- ``?watch=true`` from a ``resourceVersion``: a chunked stream of JSON events,
  one per line (ADDED, MODIFIED, DELETED; an object leaving a label selector is
  DELETED), ``BOOKMARK`` events when ``allowWatchBookmarks=true``, the stream
  ended after ``timeoutSeconds``, and an ``ERROR`` event with a 410 Status when
  the version asked for was compacted away;
- faults on demand: :meth:`FakeApiServer.close_watches` ends the open streams,
  :meth:`~FakeApiServer.error_watches` ends them with an ERROR event,
  :meth:`~FakeApiServer.stall_watches` leaves them open and silent forever (a
  network path that died), :meth:`~FakeApiServer.compact` expires old versions,
  :meth:`~FakeApiServer.expire_continue_tokens` makes a paginated list 410, and
  :meth:`~FakeApiServer.fail_next` answers the next requests with an error such
  as 429 with ``Retry-After``.

Objects are changed with :meth:`~FakeApiServer.apply` and
:meth:`~FakeApiServer.delete`; every change takes the next resourceVersion, as
in etcd.  Only loopback is used.

>>> import json, urllib.request
>>> with FakeApiServer() as api:
...     _ = api.apply({"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
...                    "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}})
...     with urllib.request.urlopen(api.url + "/api/v1/services?limit=10") as r:
...         page = json.load(r)
>>> page["kind"], [s["metadata"]["name"] for s in page["items"]], page["metadata"]["resourceVersion"]
('ServiceList', ['web'], '1')

With the official client: ``kubernetes.client.CoreV1Api(api.api_client())``.

Import from here; the package's modules are :mod:`.store` (the objects, their
history, paginated lists, the watch fan-out and the faults), :mod:`.selectors`
(label and field selectors) and :mod:`.server` (:class:`FakeApiServer`, the
HTTP side).
"""

from socklb.kubernetes.testing.server import FakeApiServer
from socklb.kubernetes.testing.store import DEFAULT_RESOURCES as DEFAULT_RESOURCES
from socklb.kubernetes.testing.store import Fault, Request, Resource
from socklb.kubernetes.testing.store import Key as Key
from socklb.kubernetes.testing.store import Obj as Obj

__all__ = ["FakeApiServer", "Fault", "Request", "Resource"]

# The classes are this package's, wherever they are defined (pickles and documentation name it).
for _cls in (FakeApiServer, Fault, Request, Resource):
    _cls.__module__ = __name__
del _cls
