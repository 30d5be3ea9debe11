"""Move this process into the cgroup argv[1], then try to remove that cgroup:
prints "refused: <error>" when socklb refuses (it is the caller's cgroup)."""

from __future__ import annotations

import os
import sys

from socklb.datapath import cgroup
from socklb.errors import InvalidValueError

cgroup.move_pid(sys.argv[1], os.getpid())
try:
    cgroup.remove_cgroup(sys.argv[1])
except InvalidValueError as e:
    print("refused:", e)
