"""As nobody, make a Balancer: prints "denied: <error>" when socklb refuses
with PermissionDeniedError."""

from __future__ import annotations

import os

from socklb import Balancer, PermissionDeniedError

os.setgroups([])
os.setgid(65534)
os.setuid(65534)
try:
    Balancer()
except PermissionDeniedError as e:
    print("denied:", e)
