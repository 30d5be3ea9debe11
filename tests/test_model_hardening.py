"""Hardening of the value types (Service, Backend, Affinity): values that were
accepted but cannot work, and integer types other than int.  No root, no kernel."""

from __future__ import annotations

import dataclasses

from socklb import Backend

# --- ABI encoding is the control plane's ------------------------------------


def test_backend_has_no_abi_encoding_fields() -> None:
    names = {f.name for f in dataclasses.fields(Backend)}
    assert "_nport" not in names and "_state_idx" not in names
    b = Backend("10.244.1.2", 8080)
    assert not hasattr(b, "_nport") and not hasattr(b, "_state_idx")
    # what the rest of socklb uses stays
    assert b._a16 == bytes(10) + b"\xff\xff" + bytes([10, 244, 1, 2])
    assert b._version == 4 and b._key == ("10.244.1.2", 8080)
