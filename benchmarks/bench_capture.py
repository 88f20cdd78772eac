"""Capture cost: `add_task` calls on a hand-built `starlette.background.BackgroundTasks`, with a
capture active vs plain Starlette (patches uninstalled), in one process.

Clock: process CPU time (`process_time_ns`): the loop is single-threaded and CPU-bound, and CPU
time leaves out the moments other work on the machine holds the core. The garbage collector
stays on, as in a test: the records a capture keeps make it run more often, which is part of
the cost.
"""

from __future__ import annotations

from time import process_time_ns

from _common import Result, alternate, median, ratio
from starlette.background import BackgroundTasks

from pytest_bgtasks import BackgroundTaskCapture, _starlette

GOAL = 2.0


def job(number: int) -> None:
    pass


def run(quick: bool) -> Result:
    calls, rounds = (2_000, 3) if quick else (100_000, 9)

    def timed() -> int:
        batch = BackgroundTasks()
        start = process_time_ns()
        for number in range(calls):
            batch.add_task(job, number)
        elapsed = process_time_ns() - start
        assert len(batch.tasks) == calls
        return elapsed

    def plain() -> int:
        _starlette.uninstall()
        return timed()

    def captured() -> int:
        with BackgroundTaskCapture() as capture:
            elapsed = timed()
        assert len(capture.tasks) == calls
        return elapsed

    def inactive() -> int:
        _starlette.install()
        return timed()

    try:
        samples = alternate({"plain": plain, "captured": captured, "inactive": inactive}, rounds)
    finally:
        _starlette.uninstall()
    per_call = {name: median(values) / calls / 1000 for name, values in samples.items()}
    cost = ratio(per_call["captured"], per_call["plain"])
    return Result(
        name="capture cost",
        measured=f"ratio {cost:.2f}x",
        goal=f"<= {GOAL}x",
        passed=cost <= GOAL,
        figures=(
            f"capture active {per_call['captured']:.2f} µs/add_task, "
            f"plain Starlette {per_call['plain']:.2f} µs/add_task"
        ),
        method=f"{rounds} rounds x {calls:,} add_task calls, medians, process CPU time",
        notes=[
            f"patched but inactive vs plain: ratio {per_call['inactive'] / per_call['plain']:.2f}x"
            f" ({per_call['inactive']:.2f} vs {per_call['plain']:.2f} µs/add_task)"
        ],
    )
