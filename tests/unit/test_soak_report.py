"""./run soak-tests' report: failures per test over several JUnit files."""

from __future__ import annotations

from pathlib import Path

import pytest
import soak_report

CLEAN = (
    '<testsuites><testsuite><testcase classname="a" name="t1"/>'
    '<testcase classname="a" name="t2"/></testsuite></testsuites>'
)
RED = (
    '<testsuites><testsuite><testcase classname="a" name="t1"><failure message="x"/></testcase>'
    '<testcase classname="b" name="t3"><error message="y"/></testcase></testsuite></testsuites>'
)


def test_report_counts_failures_per_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for i, text in enumerate((CLEAN, RED, RED, CLEAN)):
        p = tmp_path / f"run-{i}.xml"
        p.write_text(text)
        paths.append(str(p))
    assert soak_report.main(paths) == 1
    out = capsys.readouterr().out
    assert "  2/4  a::t1" in out and "  2/4  b::t3" in out
    assert out.rstrip().endswith("soak: 4 runs, 2 clean")


def test_all_clean_is_success_and_a_missing_report_is_not(tmp_path: Path) -> None:
    p = tmp_path / "run.xml"
    p.write_text(CLEAN)
    assert soak_report.main([str(p), str(p)]) == 0
    assert soak_report.main([str(p), str(tmp_path / "absent.xml")]) == 1
