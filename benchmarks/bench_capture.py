"""Capture cost: `add_task` calls on a hand-built `starlette.background.BackgroundTasks` with a
capture active vs inactive (the patches installed, as they stay for the rest of a session once a
test used the plugin, but no capture running), in one process. Plain Starlette (patches
uninstalled) is measured alongside, as a secondary figure.

Clock: process CPU time (`process_time_ns`): the loop is single-threaded and CPU-bound, and CPU
time leaves out the moments other work on the machine holds the core. The garbage collector
stays on, as in a test: every record is one more object that its full collections walk, which
is part of the cost, so the time they take is reported too.
"""

from __future__ import annotations

import gc
from time import process_time_ns, thread_time_ns
from typing import Any

from _common import Result, alternate, median, ratio
from starlette.background import BackgroundTasks

from pytest_bgtasks import BackgroundTaskCapture, _starlette

GOAL = 2.0


def job(number: int) -> None:
    pass


class CollectorClock:
    """Time spent in the garbage collector, from its start and stop callbacks."""

    def __init__(self) -> None:
        self.total = 0
        self._start = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = thread_time_ns()
        else:
            self.total += thread_time_ns() - self._start


def run(quick: bool) -> Result:
    calls, rounds = (2_000, 3) if quick else (100_000, 9)
    collector = CollectorClock()

    def timed() -> tuple[int, int]:
        """(CPU ns, of which in the garbage collector) of the calls."""
        batch = BackgroundTasks()
        collector.total = 0
        start = process_time_ns()
        for number in range(calls):
            batch.add_task(job, number)
        elapsed = process_time_ns() - start
        assert len(batch.tasks) == calls
        return elapsed, collector.total

    def plain() -> tuple[int, int]:
        _starlette.uninstall()
        return timed()

    def captured() -> tuple[int, int]:
        with BackgroundTaskCapture() as capture:
            elapsed = timed()
        assert len(capture.tasks) == calls
        return elapsed

    def inactive() -> tuple[int, int]:
        _starlette.install()
        return timed()

    gc.callbacks.append(collector)
    try:
        samples = alternate({"plain": plain, "captured": captured, "inactive": inactive}, rounds)
    finally:
        gc.callbacks.remove(collector)
        _starlette.uninstall()
    per_call = {name: median([c for c, _ in v]) / calls / 1000 for name, v in samples.items()}
    in_gc = {name: median([g for _, g in v]) / calls / 1000 for name, v in samples.items()}
    cost = ratio(per_call["captured"], per_call["inactive"])
    return Result(
        name="capture cost",
        measured=f"ratio {cost:.2f}x",
        goal=f"<= {GOAL}x",
        passed=cost <= GOAL,
        figures=(
            f"capture active {per_call['captured']:.2f} µs/add_task, "
            f"inactive {per_call['inactive']:.2f} µs/add_task"
        ),
        method=f"{rounds} rounds x {calls:,} add_task calls, medians, process CPU time",
        notes=[
            f"capture active vs plain Starlette: ratio "
            f"{ratio(per_call['captured'], per_call['plain']):.2f}x "
            f"({per_call['captured']:.2f} vs {per_call['plain']:.2f} µs/add_task)",
            f"in the garbage collector: {in_gc['captured']:.2f} µs/add_task with the capture "
            f"active, {in_gc['inactive']:.2f} inactive, {in_gc['plain']:.2f} plain",
        ],
    )
