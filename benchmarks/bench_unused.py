"""Unused-plugin overhead: a generated suite of trivial tests that never use the plugin, run by
pytest with the plugin installed vs `-p no:bgtasks`.

Each run is a fresh `python -m pytest` subprocess, the two variants alternating, rotated, both
without the other installed pytest plugins. One test of the suite checks that the variant is
what it claims and that nothing of Starlette was imported. Figure: the ratio of the runs' CPU
time (user and system of the subprocess, `RUSAGE_CHILDREN`), round by round, start-up included
(loading the plugin is part of its cost). Secondary: the same ratio for the test loop alone
(timed inside the subprocess), and for wall time, what a user waits for (it also counts the
moments the run waits for a core).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import LOOP_CLOCK, Report, Result, Spread, alternate, ratios, run_pytest

GOAL = 1.01
TESTS_PER_FILE = 50

CHECK = """
import os
import sys


def test_plugin_is_registered_as_expected_and_unused(request):
    expected = os.environ["BENCH_EXPECT_PLUGIN"] == "1"
    assert request.config.pluginmanager.has_plugin("bgtasks") is expected
    assert "starlette" not in sys.modules
"""


def write_suite(directory: Path, tests: int) -> None:
    """`tests` trivial tests in files of TESTS_PER_FILE, the check being one of them."""
    (directory / "pytest.ini").write_text("[pytest]\n")  # stop the search for a config file
    (directory / "conftest.py").write_text(LOOP_CLOCK)
    (directory / "test_check.py").write_text(CHECK)
    remaining = tests - 1
    for number in range(0, remaining, TESTS_PER_FILE):
        count = min(TESTS_PER_FILE, remaining - number)
        body = "".join(
            f"def test_{number + i}():\n    assert {number + i} + 1 > {number + i}\n\n\n"
            for i in range(count)
        )
        (directory / f"test_generated_{number // TESTS_PER_FILE:03}.py").write_text(body)


def run(quick: bool) -> Report:
    tests, rounds = (20, 1) if quick else (500, 11)
    with tempfile.TemporaryDirectory(prefix="bgtasks-bench-") as name:
        directory = Path(name)
        write_suite(directory, tests)
        samples = alternate(
            {
                "installed": lambda: run_pytest(directory, [], {"BENCH_EXPECT_PLUGIN": "1"}),
                "disabled": lambda: run_pytest(
                    directory, ["-p", "no:bgtasks"], {"BENCH_EXPECT_PLUGIN": "0"}
                ),
            },
            rounds,
        )
    cpu = {key: [run.cpu_ns for run in values] for key, values in samples.items()}
    loop = {key: [run.loop_ns for run in values] for key, values in samples.items()}
    wall = {key: [run.wall_ns for run in values] for key, values in samples.items()}
    run_ms = {key: Spread.of(values).median / 1e6 for key, values in cpu.items()}
    return Report(
        results=[
            Result(
                name="unused plugin",
                measured=ratios(cpu["installed"], cpu["disabled"]),
                unit="x",
                digits=3,
                goal=GOAL,
                figures=(
                    f"installed {run_ms['installed']:.0f} ms/run, "
                    f"-p no:bgtasks {run_ms['disabled']:.0f} ms/run (medians)"
                ),
                method=(
                    f"CPU time, installed / -p no:bgtasks, round by round; {rounds} rounds x "
                    f"{tests} trivial tests, pytest subprocesses, CPU time of the subprocess"
                ),
                notes=[
                    f"test loop alone: {ratios(loop['installed'], loop['disabled']).show(3, 'x')}"
                    f"; wall time: {ratios(wall['installed'], wall['disabled']).show(3, 'x')}"
                ],
            )
        ]
    )
