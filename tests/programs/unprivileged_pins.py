"""As nobody (after importing everything), try to read and open the pins of
the pin directory argv[1] every way socklb offers; print what each attempt
gave as JSON."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict

from socklb import Balancer, SocklbError
from socklb._native import ffi, lib

pd = sys.argv[1]
# Everything is imported; now become nobody (the interpreter's files may be unreadable to it).
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
out: Dict[str, Any] = {}


def attempt(name: str, fn: Callable[[], object]) -> None:
    try:
        fn()
        out[name] = "ok"
    except Exception as e:
        err = getattr(e, "errno", None)
        out[name] = [type(e).__name__, err, isinstance(e, SocklbError), isinstance(e, PermissionError)]


attempt("listdir", lambda: os.listdir(pd))
attempt("listdir_maps", lambda: os.listdir(pd + "/maps"))
attempt("open_services", lambda: open(pd + "/maps/services", "rb").read())


def obj_get() -> None:
    buf = ffi.new("uint8_t[]", 64)
    n = ffi.new("uint32_t *")
    rc = lib.socklb_read_pinned((pd + "/maps/meta").encode(), buf, 64, n)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))


attempt("bpf_obj_get_meta", obj_get)
attempt("balancer_open", lambda: Balancer.open(pd))
attempt("balancer_pin_dir", lambda: Balancer(pin_dir=pd))
print(json.dumps(out))
