"""How the operator's commands print: tables, JSON and YAML, and their own error."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

from socklb.errors import SocklbError

__all__ = ["CommandError", "EXIT_ERROR", "render", "table"]

EXIT_ERROR = 2


class CommandError(SocklbError):
    """A command's own failure (bad arguments, a missing optional package)."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces (like ``cilium-dbg bpf lb list``).

    >>> print(table(["A", "BB"], [["x", 1], ["yyy", 22]]))
    A    BB
    x    1
    yyy  22
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def render(data: Any, fmt: str, as_table: Callable[[Any], str]) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise CommandError("-o yaml needs PyYAML (pip install 'socklb[yaml]'); -o json works without it") from None
        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).rstrip("\n")
    return as_table(data)
