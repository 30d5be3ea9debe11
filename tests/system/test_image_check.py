"""deploy/image_check.py, the check ./run image runs in the image, passes on
this checkout (root: it attaches to a cgroup of its own and pins below
/sys/fs/bpf).  The manifests' checks are in tests/unit/test_deploy_manifests.py."""

from __future__ import annotations

from typing import Any

from helpers import REPO


def test_the_image_check_passes_on_this_checkout(tmp_path: Any) -> None:
    """``./run image`` runs deploy/image_check.py inside the built image (too slow
    for the suite); here the same script runs against this checkout's agent, so it
    cannot rot: the agent starts, serves /healthz, programs and updates a Service."""
    import os
    import secrets
    import signal
    import subprocess
    import sys

    from helpers import child_env, require_root

    from socklb.datapath.cgroup import cgroup2_mount
    from socklb.kubernetes import testing  # noqa: F401  (the script needs the extra)

    require_root()
    cgroup = os.path.join(cgroup2_mount(), f"socklb-test-image-{secrets.token_hex(4)}")
    pin_dir = f"/sys/fs/bpf/socklb-test-image-{secrets.token_hex(4)}"
    os.mkdir(cgroup)
    env = dict(child_env(), PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    try:
        # A session of its own: if the test is interrupted or times out, the
        # agent the script started goes with it instead of holding the pins.
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "deploy" / "image_check.py"), "--cgroup", cgroup, "--pin-dir", pin_dir],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the script's agent, if still there
            except ProcessLookupError:
                pass
            proc.wait()
        r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert "image check: /healthz 200" in lines
        assert "image check: 10.96.0.10:80 -> ['10.244.1.2:8080']" in lines
        assert lines[-1] == "image check: ok"
        assert not os.path.exists(pin_dir)
    finally:
        os.rmdir(cgroup)
        if os.path.exists(pin_dir):
            from socklb.datapath import pins

            pins.remove(pin_dir)
