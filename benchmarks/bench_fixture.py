"""Per-test cost of the `bgtasks` fixture, against a no-op fixture of the same shape.

Two generated suites of N trivial tests, in files of 50: one whose tests request `bgtasks`, one
whose tests request `noop`, a function-scoped generator fixture that takes `request` and yields
None. Both share one `conftest.py`, which defines `noop` and imports the plugin's public API, so
that both sessions import the core and Starlette: what differs is the fixture alone (its set-up
and teardown checks, and the report hook the plugin adds once a test uses it). Each run is a
fresh `python -m pytest` subprocess without the other installed plugins (`-p no:randomly`,
`-p no:xdist`, ...), the two suites alternating, rotated.

Figure: (CPU time of the `bgtasks` run - the `noop` run) / N, round by round. Clock: the CPU time
of the subprocess (user and system, `RUSAGE_CHILDREN`); its wall time is a secondary figure.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from _common import Report, Result, Spread, alternate, differences, run_pytest

GOAL_US = 40.0
TESTS_PER_FILE = 50

CONFTEST = """
import pytest

# Both suites import the core (and with it Starlette), so only the fixture differs.
from pytest_bgtasks import BackgroundTaskCapture  # noqa: F401


@pytest.fixture
def noop(request):
    yield None
"""


def write_suite(directory: Path, fixture: str, tests: int) -> None:
    directory.mkdir()
    (directory / "pytest.ini").write_text("[pytest]\n")  # stop the search for a config file
    (directory / "conftest.py").write_text(CONFTEST)
    for number in range(0, tests, TESTS_PER_FILE):
        count = min(TESTS_PER_FILE, tests - number)
        body = "".join(f"def test_{number + i}({fixture}):\n    pass\n\n\n" for i in range(count))
        (directory / f"test_generated_{number // TESTS_PER_FILE:03}.py").write_text(body)


def slope(clock: dict[str, list[float]], fixture: str, small: int, large: int) -> list[float]:
    """Round by round: what one more test with `fixture` costs, from the two suite sizes."""
    return [
        (many - few) / (large - small)
        for many, few in zip(
            clock[f"{fixture} x{large}"], clock[f"{fixture} x{small}"], strict=True
        )
    ]


def run(quick: bool) -> Report:
    small, large, rounds = (5, 20, 1) if quick else (100, 1000, 9)
    suites = {
        f"{fixture} x{tests}": (fixture, tests)
        for fixture in ("bgtasks", "noop")
        for tests in (small, large)
    }
    with tempfile.TemporaryDirectory(prefix="bgtasks-bench-") as name:
        root = Path(name)
        for suite, (fixture, tests) in suites.items():
            write_suite(root / suite, fixture, tests)
        samples = alternate(
            {suite: functools.partial(run_pytest, root / suite, [], {}) for suite in suites},
            rounds,
        )
    cpu = {suite: [seconds * 1e6 for seconds, _ in values] for suite, values in samples.items()}
    wall = {suite: [ns / 1000 for _, ns in values] for suite, values in samples.items()}
    extra = [
        with_fixture - without
        for with_fixture, without in zip(
            slope(cpu, "bgtasks", small, large), slope(cpu, "noop", small, large), strict=True
        )
    ]
    wall_extra = differences(
        slope(wall, "bgtasks", small, large), slope(wall, "noop", small, large)
    )
    # The difference between the small suites, less their tests' share: what the plugin's first
    # use costs a session once.
    once = Spread.of(
        [
            (with_fixture - without - small * per_test) / 1000
            for with_fixture, without, per_test in zip(
                cpu[f"bgtasks x{small}"], cpu[f"noop x{small}"], extra, strict=True
            )
        ]
    )
    run_ms = {suite: Spread.of(values).median / 1000 for suite, values in cpu.items()}
    return Report(
        results=[
            Result(
                name="bgtasks fixture per test",
                measured=Spread.of(extra),
                unit=" µs",
                digits=1,
                goal=GOAL_US,
                figures=(
                    f"runs of {large:,} tests: bgtasks {run_ms[f'bgtasks x{large}']:.0f} ms, "
                    f"noop {run_ms[f'noop x{large}']:.0f} ms (medians); once per session "
                    f"{once.show(1, ' ms')}"
                ),
                method=(
                    f"CPU time per test from suites of {small} and {large:,} tests (the slope, "
                    f"so one-time costs drop out), bgtasks - noop, round by round; {rounds} "
                    "rounds, pytest subprocesses, CPU time of the subprocess"
                ),
                notes=[f"wall time: {wall_extra.show(1, ' µs')} per test"],
            )
        ]
    )
