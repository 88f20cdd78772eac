"""Assertion cost: `assert_task_added` over a capture holding many records, with the expected
call given positionally and by keyword.

The records come from `BackgroundTask(job, number)` in a loop inside an active capture (its
arguments positional, as an app's `add_task(job, number)` makes them); the assertion looks for
one near the end, as `assert_task_added(job, wanted)` and as `assert_task_added(job,
number=wanted)`, which must bind both calls to `job`'s signature to compare them. Beside them,
the floor: a plain Python scan of a list of `(func, args, kwargs)` tuples for the same call.
The three alternate in each round, rotated. A failing assertion (no match, so the message
listing every task is built) is a secondary figure.

Clock: process CPU time (`process_time_ns`): single-threaded and CPU-bound.
"""

from __future__ import annotations

from collections.abc import Callable
from time import process_time_ns
from typing import Any

from _common import Report, Result, Spread, alternate, plain_starlette, ratios
from starlette.background import BackgroundTask

from pytest_bgtasks import BackgroundTaskCapture, assert_task_added

GOAL_MS = 15.0


def job(number: int) -> None:
    pass


Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def timed(call: Callable[[], object]) -> int:
    start = process_time_ns()
    call()
    return process_time_ns() - start


def scan(calls: list[Call], number: int) -> Call:
    return next(c for c in calls if c[0] is job and c[1] == (number,) and c[2] == {})


def failing_assertion() -> str:
    try:
        assert_task_added(job, -1)
    except AssertionError as exc:
        return str(exc)
    raise RuntimeError("assert_task_added(job, -1) found a record")


def run(quick: bool) -> Report:
    count, rounds = (2_000, 3) if quick else (100_000, 9)
    wanted = count - 10
    calls: list[Call] = [(job, (number,), {}) for number in range(count)]
    plain_starlette()
    with BackgroundTaskCapture():
        for number in range(count):
            BackgroundTask(job, number)
        found = assert_task_added(job, wanted)
        assert found is assert_task_added(job, number=wanted)
        assert scan(calls, wanted)[1] == found.args
        samples = alternate(
            {
                "positional": lambda: timed(lambda: assert_task_added(job, wanted)),
                "keyword": lambda: timed(lambda: assert_task_added(job, number=wanted)),
                "scan": lambda: timed(lambda: scan(calls, wanted)),
            },
            rounds,
        )
        failing = [timed(failing_assertion) for _ in range(1 if quick else 3)]
        message = failing_assertion()
    plain_starlette()

    scan_ms = Spread.of([ns / 1e6 for ns in samples["scan"]])
    results = []
    for name in ("positional", "keyword"):
        measured = Spread.of([ns / 1e6 for ns in samples[name]])
        results.append(
            Result(
                name=f"assert_task_added, {name} expectation",
                measured=measured,
                unit=" ms",
                digits=2,
                goal=GOAL_MS,
                figures=(
                    f"{measured.median * 1e6 / count:.0f} ns/record; tuple scan "
                    f"{scan_ms.show(2, ' ms')}, ratio "
                    f"{ratios(samples[name], samples['scan']).show(1, 'x')}"
                ),
                method=(
                    f"{count:,} records made positionally, match at #{wanted:,}, "
                    f"{'job(wanted)' if name == 'positional' else 'job(number=wanted)'} "
                    f"expected; alternating with the other expectation and a tuple scan, "
                    f"{rounds} rounds, process CPU time"
                ),
            )
        )
    results[-1].notes.append(
        f"failing assertion (no match, message built): "
        f"{Spread.of([ns / 1e6 for ns in failing]).show(0, ' ms')}, "
        f"message {len(message.splitlines()):,} lines"
    )
    return Report(results=results)
