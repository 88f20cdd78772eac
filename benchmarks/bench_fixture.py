"""Per-test cost of the `bgtasks` fixture, against a no-op fixture of the same shape.

Two generated suites of N trivial tests, in files of 50: one whose tests request `bgtasks`, one
whose tests request `noop`, a function-scoped generator fixture that takes `request` and yields
None. Both share one `conftest.py`, which defines `noop` and imports the plugin's public API and
the Starlette modules the plugin's source imports at first use, so that both sessions import the
core and Starlette: what differs is the fixture alone (its set-up
and teardown checks, and the report hook the plugin adds once a test uses it). Each run is a
fresh `python -m pytest` subprocess without the other installed plugins (`-p no:randomly`,
`-p no:xdist`, ...), the two suites alternating, rotated.

Figure: (CPU time of the `bgtasks` suite's test loop - the `noop` suite's) / N, round by round.
The test loop is timed inside the subprocess (`process_time_ns` around `pytest_runtestloop`, all
its threads): start-up and collection, the same in both, stay out of the figure and of its
noise. It includes the plugin's one-time work at its first use, shared by N tests. The CPU time
of the whole subprocess (`RUSAGE_CHILDREN`) gives the same difference with start-up's noise in
it, a secondary figure; so is wall time.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import (
    LOOP_CLOCK,
    PytestRun,
    Report,
    Result,
    Spread,
    alternate,
    differences,
    run_pytest,
)

GOAL_US = 40.0
TESTS_PER_FILE = 50
FIXTURES = ("bgtasks", "noop")

CONFTEST = (
    LOOP_CLOCK
    + """

# Both suites import the core and the Starlette modules its source needs (the plugin's public
# API imports no Starlette), so only the fixture differs.
import starlette._utils  # noqa: F401
import starlette.applications  # noqa: F401
import starlette.background  # noqa: F401

from pytest_bgtasks import BackgroundTaskCapture  # noqa: F401


@pytest.fixture
def noop(request):
    yield None
"""
)


def write_suite(directory: Path, fixture: str, tests: int) -> None:
    directory.mkdir()
    (directory / "pytest.ini").write_text("[pytest]\n")  # stop the search for a config file
    (directory / "conftest.py").write_text(CONFTEST)
    for number in range(0, tests, TESTS_PER_FILE):
        count = min(TESTS_PER_FILE, tests - number)
        body = "".join(f"def test_{number + i}({fixture}):\n    pass\n\n\n" for i in range(count))
        (directory / f"test_generated_{number // TESTS_PER_FILE:03}.py").write_text(body)


def run(quick: bool) -> Report:
    tests, rounds = (20, 2) if quick else (500, 21)
    with tempfile.TemporaryDirectory(prefix="bgtasks-bench-") as name:
        root = Path(name)
        for fixture in FIXTURES:
            write_suite(root / fixture, fixture, tests)
        samples = alternate(
            {
                fixture: functools.partial(run_pytest, root / fixture, [], {})
                for fixture in FIXTURES
            },
            rounds,
        )

    def per_test(clock: Callable[[PytestRun], int]) -> Spread:
        bgtasks, noop = ([clock(run) for run in samples[fixture]] for fixture in FIXTURES)
        return differences(bgtasks, noop, 1 / tests / 1000)

    loop_ms = {f: Spread.of([run.loop_ns / 1e6 for run in samples[f]]).median for f in FIXTURES}
    return Report(
        results=[
            Result(
                name="bgtasks fixture per test",
                measured=per_test(lambda run: run.loop_ns),
                unit=" µs",
                digits=1,
                goal=GOAL_US,
                figures=(
                    f"test loops of {tests:,} tests: bgtasks {loop_ms['bgtasks']:.0f} ms, noop "
                    f"{loop_ms['noop']:.0f} ms (medians); whole runs "
                    f"{per_test(lambda run: run.cpu_ns).show(1, ' µs')} per test"
                ),
                method=(
                    f"(bgtasks suite - noop suite) / tests, CPU time of the test loop in the "
                    f"pytest subprocess, round by round; {rounds} rounds x {tests:,} trivial "
                    "tests"
                ),
                notes=[
                    f"wall time, whole runs: {per_test(lambda run: run.wall_ns).show(1, ' µs')}"
                ],
            )
        ]
    )
