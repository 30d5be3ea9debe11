"""As nobody (after importing everything), run the read-only operator
surfaces against the pin directory argv[1] and a missing one argv[2]: what
PinnedView raises, and what ``socklb services`` and ``socklb apply --dry-run``
(its file, argv[3], given on stdin: the test's files are root's) exit with and
print; as JSON."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from typing import Any, Dict, List

from socklb import cli
from socklb.ops import servicefile  # noqa: F401 - imported before the privileges go
from socklb.ops.view import PinnedView

pd, missing, text = sys.argv[1], sys.argv[2], sys.argv[3]


def run(args: List[str]) -> Dict[str, Any]:
    err, std = io.StringIO(), io.StringIO()
    sys.stdin = io.StringIO(text)
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        rc = cli.main(args)
    return {"rc": rc, "stdout": std.getvalue(), "stderr": err.getvalue()}


# Everything the commands import lazily (argparse's gettext and locale too), as
# root, against the missing directory (nothing is written: a dry run and a read).
run(["services", "--pin-dir", missing])
run(["apply", "-f", "-", "--pin-dir", missing, "--dry-run"])
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
out: Dict[str, Any] = {}
for name, path in (("view", pd), ("view_missing", missing)):
    try:
        PinnedView(path).close()
        out[name] = "ok"
    except Exception as e:
        out[name] = [type(e).__name__, getattr(e, "errno", None), str(e)]


out["services"] = run(["services", "--pin-dir", pd])
out["dry_run"] = run(["apply", "-f", "-", "--pin-dir", pd, "--dry-run"])
out["dry_run_missing"] = run(["apply", "-f", "-", "--pin-dir", missing, "--dry-run"])
print(json.dumps(out))
