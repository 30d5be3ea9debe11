"""The error path: feature probes, verifier logs, errno mapping."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

import socklb._native as _core
from socklb import (
    KernelError,
    MissingFeatureError,
    PermissionDeniedError,
    SocklbError,
    VerifierError,
)
from socklb._native import abi, features
from socklb.datapath import live as datapath_mod


def test_missing_feature_names_feature_and_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    set_retval = features.Feature("set_retval", "the bpf_set_retval() helper", "5.18", 0)
    monkeypatch.setattr(features, "missing", lambda: [set_retval])
    with pytest.raises(MissingFeatureError) as e:
        datapath_mod.raise_for_load(-errno.EINVAL, "", 0)
    assert e.value.feature == "the bpf_set_retval() helper" and e.value.kernel == "5.18"
    assert "Linux 5.18 or newer" in str(e.value)


def test_verifier_rejection_keeps_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "missing", lambda: [])
    # A rejection by the verifier, as root: without root, EACCES says that
    # privileges are missing (PermissionDeniedError) and no verifier ran.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    log = "0: (b7) r0 = 1\n1: (95) exit\nR0 invalid mem access 'scalar'\n"
    with pytest.raises(VerifierError) as e:
        datapath_mod.raise_for_load(-errno.EACCES, log, 1)
    assert e.value.log == log
    assert e.value.errno == errno.EACCES
    assert "socklb_connect6" in str(e.value) and "invalid mem access" in str(e.value)
    assert isinstance(e.value, SocklbError) and isinstance(e.value, OSError)


def test_check_maps_errno() -> None:
    assert _core.check(5, "op") == 5
    with pytest.raises(PermissionDeniedError) as p:
        _core.check(-errno.EPERM, "attach")
    assert "CAP_BPF" in str(p.value) and isinstance(p.value, PermissionError)
    with pytest.raises(KernelError) as k:
        _core.check(-errno.E2BIG, "update of map services")
    assert k.value.errno == errno.E2BIG and k.value.op == "update of map services"
    assert "update of map services" in str(k.value)


def test_codecs_match_the_c_layout() -> None:
    for codec, ctype in (
        (abi.SVC_KEY, "struct socklb_svc_key"),
        (abi.SVC_VAL, "struct socklb_svc_val"),
        (abi.SLOT_KEY, "struct socklb_slot_key"),
        (abi.SLOT_VAL, "struct socklb_slot_val"),
        (abi.BACKEND_VAL, "struct socklb_backend_val"),
    ):
        assert codec.size == _core.ffi.sizeof(ctype)
    key = abi.SVC_KEY.pack(addr=b"\x00" * 10 + b"\xff\xff" + bytes([10, 96, 0, 10]), port=_core.htons(80), proto=6)
    c = _core.ffi.from_buffer("struct socklb_svc_key *", bytearray(key))
    assert bytes(_core.ffi.buffer(c.addr))[-4:] == bytes([10, 96, 0, 10])
    assert c.port == _core.htons(80) and c.proto == 6


def test_forcing_features_missing() -> None:
    with features.forced_missing("set_retval", "sock_destroy"):
        names = {f.name for f in features.missing()}
        assert {"set_retval", "sock_destroy"} <= names
        assert features.missing_bits() & features.SET_RETVAL.bit
    with pytest.raises(ValueError, match="unknown feature nope"):
        with features.forced_missing("nope"):
            pass
    # The environment variable is the same seam, for a whole process.
    code = "from socklb._native import features; print(sorted(f.name for f in features.missing()))"
    env = dict(os.environ, **{features.FORCE_ENV: "sock_destroy"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "sock_destroy" in out


def test_every_optional_feature_has_a_fallback() -> None:
    for f in features.FEATURES:
        assert f.required == (not f.fallback), f
