"""The benchmarks run, small, as a smoke check. Their numbers are not checked here: a benchmark
reports, it does not gate."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODES = ("run", "defer", "skip")
RESULTS = (
    *(f"extra cost per task, {mode} mode" for mode in MODES),
    *(f"request with 1 task, {mode} mode" for mode in MODES),
    *(f"request with 100 tasks, {mode} mode" for mode in MODES),
    "run_deferred per task",
    "assert_task_added, positional expectation",
    "assert_task_added, keyword expectation",
    "bytes per record, run mode",
    "bytes per record, defer mode",
    "bgtasks fixture per test",
    "unused plugin",
    "Celery .delay() under capture",
)
GRID = [
    f"| {client} | {kind} | {tasks} | "
    for client in ("TestClient", "AsyncClient")
    for kind in ("async", "sync")
    for tasks in ("1", "10", "100", "1,000")
]
"""The rows of the request grid, in each of its two tables (ratios, extra cost per task); the
long capture adds one more row of 1,000 async tasks through TestClient to each."""

FIGURE = r"-?\d[\d,.]*"
UNIT = "(x| µs| ms| bytes)"
SPREAD = rf"{FIGURE}{UNIT} \[{FIGURE}, {FIGURE}\]"
"""A median and its interquartile range: `1.520x [1.490, 1.550]`."""


@pytest.mark.slow
def test_the_quick_benchmarks_print_every_figure_with_its_spread_goal_and_verdict() -> None:
    completed = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    for name in RESULTS:
        (line,) = [line for line in lines if line.startswith(f"{name}: ")]
        assert re.match(
            rf"{re.escape(name)}: {SPREAD} \(goal <= {FIGURE}{UNIT}\) (PASS|MISS) \| ", line
        ), line

    (measured,) = [line for line in lines if line.startswith("Measured ")]
    assert " cores, " in measured
    assert "load average" in measured
    assert "| benchmark | goal | measured | verdict | figures | method |" in lines
    summary = [
        line for line in lines if line.startswith("| ") and line.split(" | ")[0][2:] in RESULTS
    ]
    assert [row.split(" | ")[0][2:] for row in summary] == list(RESULTS)
    for row in summary:
        assert re.fullmatch(
            rf"\| [^|]+ \| <= {FIGURE}{UNIT} \| {SPREAD} \| (PASS|MISS) \| [^|]+ \| [^|]+ \|", row
        ), row

    for prefix in GRID:
        rows = [line for line in lines if line.startswith(prefix)]
        assert len(rows) == (4 if prefix == "| TestClient | async | 1,000 | " else 2), prefix
        for row in rows:
            assert row.count("[") >= 5, row
