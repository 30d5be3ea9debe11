"""The label and field selectors the fake API server understands: equality
terms only (``k``, ``!k``, ``k=v``, ``k==v``, ``k!=v``; ``metadata.name`` and
``metadata.namespace``), as controllers use them."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple

Obj = Dict[str, Any]


def _selector(text: str) -> Callable[[Obj], bool]:
    """A label selector of equality terms: k, !k, k=v, k==v, k!=v."""
    terms: List[Callable[[Dict[str, Any]], bool]] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(!?)([A-Za-z0-9./_-]+)(?:\s*(==|=|!=)\s*([A-Za-z0-9._-]*))?", raw)
        if m is None:
            raise ValueError(f"unsupported label selector term {raw!r}")
        neg, key, op, value = m.groups()
        if op is None:
            terms.append(
                (lambda k: lambda labels: k not in labels)(key) if neg else (lambda k: lambda labels: k in labels)(key)
            )
        elif neg:
            raise ValueError(f"unsupported label selector term {raw!r}")
        elif op == "!=":
            terms.append((lambda k, v: lambda labels: labels.get(k) != v)(key, value))
        else:
            terms.append((lambda k, v: lambda labels: labels.get(k) == v)(key, value))

    def match(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(t(labels) for t in terms)

    return match


def _field_selector(text: str) -> Callable[[Obj], bool]:
    terms: List[Tuple[str, bool, str]] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(metadata\.name|metadata\.namespace)\s*(==|=|!=)\s*(.*)", raw)
        if m is None:
            raise ValueError(f"unsupported field selector term {raw!r}")
        terms.append((m.group(1).split(".")[1], m.group(2) != "!=", m.group(3)))

    def match(obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        return all((meta.get(f, "") == v) == eq for f, eq, v in terms)

    return match


def matcher(ns: Optional[str], q: Dict[str, str]) -> Callable[[Obj], bool]:
    """Whether an object is in namespace ``ns`` (None: any) and matches the
    ``labelSelector`` and ``fieldSelector`` of the query ``q``."""
    labels = _selector(q.get("labelSelector", ""))
    fields = _field_selector(q.get("fieldSelector", ""))
    return lambda o: (ns is None or o["metadata"].get("namespace") == ns) and labels(o) and fields(o)
