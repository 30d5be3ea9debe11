"""Compiles the C load generator and server into ``bench/bin/`` (gitignored)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Dict

__all__ = ["BENCH_DIR", "BIN_DIR", "build"]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BIN_DIR = os.path.join(BENCH_DIR, "bin")
_PROGRAMS = {"loadgen": "loadgen.c", "server": "server.c"}
_FLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-pthread"]


def build(force: bool = False, cc: str = "") -> Dict[str, str]:
    """Build what is missing or older than its sources; returns name -> path."""
    compiler = cc or os.environ.get("CC", "") or shutil.which("gcc") or "cc"
    os.makedirs(BIN_DIR, exist_ok=True)
    header = os.path.join(BENCH_DIR, "proto.h")
    out: Dict[str, str] = {}
    for name, src in _PROGRAMS.items():
        source = os.path.join(BENCH_DIR, src)
        target = os.path.join(BIN_DIR, name)
        newest = max(os.path.getmtime(source), os.path.getmtime(header), os.path.getmtime(__file__))
        if force or not os.path.exists(target) or os.path.getmtime(target) < newest:
            tmp = target + ".tmp"
            r = subprocess.run(
                [compiler, *_FLAGS, "-o", tmp, source], capture_output=True, text=True, timeout=120, check=False
            )
            if r.returncode != 0:
                raise RuntimeError(f"compiling {src} failed:\n{r.stderr}")
            os.replace(tmp, target)
        out[name] = target
    return out
