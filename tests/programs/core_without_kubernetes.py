"""socklb, socklb.kubernetes and its reflector and testing modules import, and
translate dicts, without importing the kubernetes package."""

from __future__ import annotations

import sys

import socklb
import socklb.kubernetes as k
import socklb.kubernetes.reflector
import socklb.kubernetes.testing  # noqa: F401  (imported for what it imports)

s = {"metadata": {"name": "a"}, "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 1}]}}
assert len(k.translate([s], [], "n")) == 1
assert "kubernetes" not in sys.modules, "kubernetes was imported"
