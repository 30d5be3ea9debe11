"""Declarative service files for ``socklb apply``: YAML or JSON of the
:class:`~socklb.Service` and :class:`~socklb.Backend` fields.

A file is a list of services, or a mapping with one key ``services``::

    services:
      - address: 10.96.0.10
        port: 80
        protocol: tcp              # default tcp
        algorithm: random          # random (default; by weight), weighted (= random), maglev
        affinity: {timeout: 600}   # or a number of seconds, or null
        terminate_tcp: false
        backends:
          - {address: 10.244.1.2, port: 8080, weight: 3}
          - {address: 10.244.2.2, port: 8080, state: terminating}
      - address: 0.0.0.0           # a NodePort: every node address
        port: 30080
        frontend: node_port        # address (default), node_port, host_port
        backends: [{address: 10.244.1.2, port: 8080}]

``socklb apply`` is additive (like ``kubectl apply``): it adds the services a
file names and updates those that differ; ``--prune`` also removes the services
the file does not name.  A file with no services (empty, only comments,
``null``, ``services:`` with nothing under it) is refused; an explicit empty
list (``[]``, ``services: []``) with ``--prune`` removes every service.

JSON is read with the standard library; YAML needs PyYAML (``socklb[yaml]``).
Unknown fields are errors that name them (a typo never passes silently).  The
``id`` and ``selections`` fields that ``socklb services -o json`` prints are
accepted and ignored, so its output can be applied back.

>>> [str(s) for s in parse('[{"address": "10.96.0.10", "port": 80, "backends": []}]')]
['10.96.0.10:80/tcp']
>>> parse('[{"address": "10.96.0.10", "port": 80, "weight": 2}]')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
socklb.errors.InvalidValueError: services[0]: unknown field 'weight' (known: address, port, ...)
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from socklb.control.planner import check_end_state
from socklb.datapath.limits import Limits
from socklb.errors import InvalidValueError, NotFoundError, PermissionDeniedError
from socklb.model import Affinity, Backend, Service

__all__ = ["load", "parse", "check_request", "diff", "diff_pinned", "apply", "diff_text", "result_text"]

_SVC_FIELDS = ("address", "port", "protocol", "backends", "algorithm", "affinity", "terminate_tcp", "frontend")
_BE_FIELDS = ("address", "port", "weight", "state")
_READ_ONLY = ("id", "selections")
_EMPTY = (
    "holds no services (an empty or null document): refused; to remove every service, "
    "apply an explicit empty list ('[]' or 'services: []') with --prune"
)


def _fields(d: object, where: str, known: tuple[str, ...], required: tuple[str, ...]) -> Dict[str, Any]:
    if not isinstance(d, dict):
        raise InvalidValueError(where, f"must be a mapping of fields, not {type(d).__name__}")
    for k in d:
        if k not in known and k not in _READ_ONLY:
            raise InvalidValueError(where, f"unknown field {k!r} (known: {', '.join(known)})")
    for k in required:
        if k not in d:
            raise InvalidValueError(where, f"missing field {k!r}")
    return {k: v for k, v in d.items() if k in known}


def _affinity(v: object, where: str) -> Optional[Affinity]:
    if v is None or v is False:
        return None
    if isinstance(v, dict):
        f = _fields(v, where, ("timeout",), ())
        return Affinity(f["timeout"]) if "timeout" in f else Affinity()
    if v is True:
        return Affinity()
    return Affinity(v)  # type: ignore[arg-type]


def services_from(data: object) -> List[Service]:
    """Services from decoded JSON/YAML (a list, or ``{"services": [...]}``)."""
    if isinstance(data, dict):
        _fields(data, "file", ("services",), ("services",))
        data = data["services"]
    if data is None:
        raise InvalidValueError("file", _EMPTY)
    if not isinstance(data, list):
        raise InvalidValueError("file", f"must hold a list of services, not {type(data).__name__}")
    out = []
    for i, d in enumerate(data):
        where = f"services[{i}]"
        f = _fields(d, where, _SVC_FIELDS, ("address", "port"))
        bes = f.pop("backends", None) or []
        if not isinstance(bes, list):
            raise InvalidValueError(f"{where}.backends", "must be a list")
        backends = []
        for j, b in enumerate(bes):
            bw = f"{where}.backends[{j}]"
            backends.append(Backend(**_fields(b, bw, _BE_FIELDS, ("address", "port"))))
        if "affinity" in f:
            f["affinity"] = _affinity(f["affinity"], f"{where}.affinity")
        try:
            out.append(Service(backends=backends, **f))
        except InvalidValueError as e:
            raise InvalidValueError(f"{where}.{e.field}" if getattr(e, "field", None) else where, _msg(e)) from None
    return out


def _msg(e: InvalidValueError) -> str:
    text = str(e)
    field = getattr(e, "field", None)
    return text[len(field) + 2 :] if field and text.startswith(f"{field}: ") else text


def parse(text: str, name: str = "<file>") -> List[Service]:
    """Services from the text of a JSON or YAML file.  Anything malformed is
    one :class:`~socklb.errors.InvalidValueError` naming the place."""
    try:
        data = _decode(text, name)
        if data is None or (isinstance(data, dict) and "services" in data and data["services"] is None):
            raise InvalidValueError("file", f"{name} {_EMPTY}")
        return services_from(data)
    except RecursionError:
        raise InvalidValueError("file", f"{name}: nested too deeply (not a services file)") from None
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, InvalidValueError):
            raise
        raise InvalidValueError("file", f"{name}: {type(e).__name__}: {e}") from None


def _decode(text: str, name: str) -> object:
    stripped = text.lstrip()
    if name.endswith(".json") or stripped.startswith(("[", "{")):
        try:
            return json.loads(text, object_pairs_hook=_json_object)
        except json.JSONDecodeError as e:
            raise InvalidValueError(
                "file", f"{name}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
        except ValueError as e:  # a duplicate key
            raise InvalidValueError("file", f"{name}: not valid JSON: {e}") from None
    try:
        import yaml
    except ImportError:
        raise InvalidValueError(
            "file",
            f"{name} looks like YAML, which needs PyYAML (pip install 'socklb[yaml]'); JSON works without it",
        ) from None
    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InvalidValueError("file", f"{name}: not valid YAML: {problem}{at}") from None


def _json_object(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


_LOADER: Optional[type] = None


def _yaml_loader() -> type:
    """yaml.SafeLoader refusing a key given twice in one mapping (PyYAML
    keeps the last one silently)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class Loader(yaml.SafeLoader):
            def construct_mapping(self, node: Any, deep: bool = False) -> Dict[Any, Any]:
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # '<<' merges may override: that is what they are for
                    key = self.construct_object(key_node, deep=True)
                    try:
                        dup = key in seen
                    except TypeError:
                        continue  # unhashable: the base class says so
                    if dup:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                        )
                    seen.add(key)
                return super().construct_mapping(node, deep)

        _LOADER = Loader
    return _LOADER


def load(path: str) -> List[Service]:
    if path == "-":
        return parse(sys.stdin.read(), "<stdin>")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidValueError("file", f"{path}: cannot read it: {e}") from None
    return parse(text, path)


def _svc_text(s: Service) -> str:
    return (
        f"{s.address}:{s.port}/{s.protocol.value}"
        if ":" not in s.address
        else f"[{s.address}]:{s.port}/{s.protocol.value}"
    )


def check_request(want: List[Service], prune: bool) -> None:
    """Refuse a file that lists no services, unless it is an explicit empty
    list given with ``prune`` (remove every service)."""
    if not want and not prune:
        raise InvalidValueError(
            "file", "lists no services: nothing to apply (an explicit empty list with --prune removes every service)"
        )


def diff(have: List[Service], want: List[Service], prune: bool = True) -> Dict[str, Any]:
    """What applying ``want`` would change on ``have``, as plain data: with
    ``prune`` what ``sync(want)`` would (services ``want`` does not name are
    removed), without it only additions and updates."""
    h = {s.key: s for s in have}
    w = {}
    for i, s in enumerate(want):
        if s.key in w:
            raise InvalidValueError(f"services[{i}]", f"service {s} is listed twice")
        w[s.key] = s
    added = [_svc_text(s) for k, s in w.items() if k not in h]
    removed = [_svc_text(s) for k, s in h.items() if k not in w] if prune else []
    changed = []
    for k, s in w.items():
        old = h.get(k)
        if old is None or old == s:
            continue
        ob = {(b.address, b.port): b for b in old.backends}
        nb = {(b.address, b.port): b for b in s.backends}
        what = []
        for attr in ("algorithm", "affinity", "terminate_tcp", "frontend"):
            a, b = getattr(old, attr), getattr(s, attr)
            if a != b:
                what.append(f"{attr} {_v(a)} -> {_v(b)}")
        what += [f"+backend {_b(b)}" for key, b in nb.items() if key not in ob]
        what += [f"-backend {_b(b)}" for key, b in ob.items() if key not in nb]
        for key, b in nb.items():
            o = ob.get(key)
            if o is not None and o != b:
                parts = [f"weight {o.weight} -> {b.weight}"] if o.weight != b.weight else []
                parts += [f"state {o.state.value} -> {b.state.value}"] if o.state != b.state else []
                what.append(f"backend {_b(b)}: {', '.join(parts)}")
        changed.append({"service": _svc_text(s), "changes": what})
    return {"added": added, "updated": changed, "removed": removed, "unchanged": len(w) - len(added) - len(changed)}


def _v(x: object) -> str:
    if isinstance(x, Affinity):
        return f"ClientIP {x.timeout}s"
    return str(getattr(x, "value", x))


def _b(b: Backend) -> str:
    return f"[{b.address}]:{b.port}" if ":" in b.address else f"{b.address}:{b.port}"


def end_state(have: List[Service], want: List[Service], prune: bool) -> List[Service]:
    """The services programmed after applying ``want`` to ``have``."""
    merged = {} if prune else {s.key: s for s in have}
    merged.update((s.key, s) for s in want)
    return list(merged.values())


def _denied(path: str, e: OSError) -> PermissionDeniedError:
    return PermissionDeniedError(f"reading {path} (pin directories are root's, mode 0700)", e.errno or errno.EACCES)


def _pinned(pin_dir: str) -> bool:
    """Whether ``pin_dir`` holds a balancer's maps.  A path this user may not
    reach is an error, never a directory without one (os.path.exists says
    False for both)."""
    meta = os.path.join(pin_dir, "maps", "meta")
    try:
        os.stat(meta)
        return True
    except PermissionError as e:
        raise _denied(pin_dir, e) from None
    except (FileNotFoundError, NotADirectoryError):
        return False


def _entries(pin_dir: str) -> List[str]:
    """What ``pin_dir`` holds; [] if it does not exist (apply would make it)."""
    try:
        return os.listdir(pin_dir)
    except PermissionError as e:
        raise _denied(pin_dir, e) from None
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return [pin_dir]  # PinnedView says what it is


def diff_pinned(pin_dir: Optional[str], want: List[Service], prune: bool = False) -> Dict[str, Any]:
    """The diff against what is pinned in ``pin_dir`` (read-only, no lock),
    after every check ``apply`` runs on the file (the limits of the pinned
    balancer, or a new one's); an empty or missing directory counts as no
    services."""
    from socklb.ops.view import PinnedView

    have: List[Service] = []
    limits = Limits()  # what apply would make in an empty directory
    if pin_dir is not None and _pinned(pin_dir):
        with PinnedView(pin_dir) as v:
            have = v.services()
            limits = v.spec
    elif pin_dir is not None and _entries(pin_dir):
        PinnedView(pin_dir).close()  # raises the reason it is not a socklb pin directory
    d = diff(have, want, prune)
    check_end_state(end_state(have, want, prune), limits)
    return d


def diff_text(d: Dict[str, Any]) -> str:
    lines = [f"+ {s}" for s in d["added"]]
    for u in d["updated"]:
        lines.append(f"~ {u['service']}")
        lines += [f"    {c}" for c in u["changes"]]
    lines += [f"- {s}" for s in d["removed"]]
    lines.append(
        f"{len(d['added'])} to add, {len(d['updated'])} to update, {len(d['removed'])} to remove, "
        f"{d['unchanged']} unchanged (dry run: nothing written)"
    )
    return "\n".join(lines)


def apply(pin_dir: Optional[str], want: List[Service], prune: bool = False) -> Dict[str, Any]:
    """Add or update the services of ``want`` on the balancer pinned in
    ``pin_dir`` (made if the directory holds none), under its owner lock;
    with ``prune`` also remove the services ``want`` does not name
    (``sync(want)``).  The balancer is closed after, its pinned maps and links
    stay."""
    from socklb.balancer import Balancer

    if pin_dir is None:
        raise InvalidValueError("pin_dir", "apply needs --pin-dir: an unpinned balancer would vanish when socklb exits")
    check_request(want, prune)
    with Balancer(pin_dir=pin_dir) as lb:
        # The diff of what is written: taken under the owner lock, from the
        # services this balancer holds.
        have = lb.services()
        d = diff(have, want, prune)
        r = lb.sync(end_state(have, want, prune))
    return {**d, "map_writes": r.map_writes}


def result_text(d: Dict[str, Any]) -> str:
    text = diff_text(d).replace(" to add", " added").replace(" to update", " updated").replace(" to remove", " removed")
    return text.replace(" (dry run: nothing written)", f" ({d['map_writes']} map writes)")
