"""Compiles the C load generator and server, and the measurement floor's helper
library (``floor.c``, used by :mod:`bench.hook_cost`), into ``bench/bin/``
(gitignored)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict, List, Tuple

__all__ = ["BENCH_DIR", "BIN_DIR", "build"]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BIN_DIR = os.path.join(BENCH_DIR, "bin")
# name -> (source, output file, extra flags before the source, flags after it)
_TARGETS: Dict[str, Tuple[str, str, List[str], List[str]]] = {
    "loadgen": ("loadgen.c", "loadgen", [], []),
    "server": ("server.c", "server", [], []),
    # A shared library loaded with ctypes; libbpf loads its empty programs.
    "floor": ("floor.c", "libfloor.so", ["-shared", "-fPIC"], ["-lbpf"]),
}
_FLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-pthread"]


def build(force: bool = False, cc: str = "") -> Dict[str, str]:
    """Build what is missing or older than its sources; returns name -> path."""
    compiler = cc or os.environ.get("CC", "") or shutil.which("gcc") or "cc"
    os.makedirs(BIN_DIR, exist_ok=True)
    header = os.path.join(BENCH_DIR, "proto.h")
    out: Dict[str, str] = {}
    for name, (src, file, pre, post) in _TARGETS.items():
        source = os.path.join(BENCH_DIR, src)
        target = os.path.join(BIN_DIR, file)
        newest = max(os.path.getmtime(source), os.path.getmtime(header), os.path.getmtime(__file__))
        if force or not os.path.exists(target) or os.path.getmtime(target) < newest:
            tmp = target + ".tmp"
            argv = [compiler, *_FLAGS, *pre, "-o", tmp, source, *post]
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            if r.returncode != 0:
                raise RuntimeError(f"compiling {src} failed:\n{r.stderr}")
            os.replace(tmp, target)
        out[name] = target
    return out
