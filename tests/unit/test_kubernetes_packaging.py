"""The kubernetes extra: CI fails, never skips, when the kubernetes package is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci", [True, False], ids=["CI=true: fails", "locally: skips"])
def test_missing_kubernetes_package(tmp_path: Path, ci: bool) -> None:
    # A package named kubernetes whose import fails shadows the installed one.
    (tmp_path / "kubernetes").mkdir()
    (tmp_path / "kubernetes" / "__init__.py").write_text("raise ImportError('kubernetes hidden by the test')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    tests = [str(HERE / "test_kubernetes_reflector.py"), str(HERE / "test_kubernetes_translate.py")]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "models or loopback", *tests],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    if ci:
        assert run.returncode != 0, out
        assert "skipped" not in out.splitlines()[-1], out
    else:
        assert run.returncode == 0, out
        assert "skipped" in out.splitlines()[-1] and "failed" not in out.splitlines()[-1], out
