"""Failures per test over several runs of the suite (``./run soak-tests N``).

Reads the JUnit XML files pytest wrote (one per run) and prints, for every
test that failed or errored in any run, in how many runs it did, then a line
``soak: N runs, K clean``.  Exit status 0 when every run was clean.

    python tests/soak_report.py run-1.xml run-2.xml ...
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from typing import List, Tuple


def failures(path: str) -> Tuple[int, List[str]]:
    """(tests run, ids of the tests that failed or errored) of one JUnit file;
    a missing or unreadable file counts as a run that failed as a whole."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return 0, [f"<no report: {e}>"]
    failed, total = [], 0
    for case in root.iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return total, failed


def main(paths: List[str]) -> int:
    per_test: Counter[str] = Counter()
    clean = 0
    for i, path in enumerate(paths, 1):
        total, failed = failures(path)
        print(f"run {i}: {total} tests, {len(failed)} failed ({path})")
        per_test.update(set(failed))
        clean += not failed and total > 0
    for name, n in per_test.most_common():
        print(f"  {n}/{len(paths)}  {name}")
    print(f"soak: {len(paths)} runs, {clean} clean")
    return 0 if clean == len(paths) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
