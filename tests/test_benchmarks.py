"""The benchmarks run, small, as a smoke check. Their numbers are not checked here: a benchmark
reports, it does not gate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("request overhead", "unused-plugin overhead", "capture cost", "lookup")


@pytest.mark.slow
def test_the_quick_benchmarks_run_and_print_every_line_and_the_table() -> None:
    completed = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    for name in BENCHMARKS:
        (line,) = [line for line in lines if line.startswith(f"{name}: ")]
        assert "(goal " in line
        assert line.split(") ", 1)[1].startswith(("PASS", "MISS"))
    assert "| benchmark | goal | measured | verdict | figures | method |" in lines
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0] for row in rows[1:]] == [f"| {name}" for name in BENCHMARKS]
