"""Lookup: `assert_task_added` against a capture holding many records, and memory per record.

The records come from `BackgroundTask(job, i)` in a loop inside an active capture; the lookup
asks for one near the end. Alternating with it, a plain Python scan of the same records for the
same call gives the side-by-side ratio: what the matching machinery costs over a bare loop. The
failing lookup (no match, so the message is built) is a secondary figure.

Clock: process CPU time (`process_time_ns`): single-threaded and CPU-bound. Memory: tracemalloc,
the records' allocations while the capture is active (with its index of tasks), net of the
tasks themselves, which the app makes with or without the plugin.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from time import process_time_ns

from _common import Result, alternate, median
from starlette.background import BackgroundTask

from pytest_bgtasks import BackgroundTaskCapture, TaskRecord, _starlette

GOAL_MS = 100.0


def job(number: int) -> None:
    pass


def timed(call: Callable[[], object]) -> int:
    start = process_time_ns()
    call()
    return process_time_ns() - start


def failing_lookup(capture: BackgroundTaskCapture) -> str:
    try:
        capture.assert_task_added(job, -1)
    except AssertionError as exc:
        return str(exc)
    raise RuntimeError("assert_task_added(job, -1) found a record")


def plain_scan(records: list[TaskRecord], number: int) -> TaskRecord:
    return next(r for r in records if r.func is job and r.args == (number,) and not r.kwargs)


def traced_bytes(count: int, capture: bool) -> int:
    """Bytes allocated to create `count` tasks (and their records, with `capture`)."""
    _starlette.uninstall()
    gc.collect()
    tracemalloc.start()
    try:
        if capture:
            with BackgroundTaskCapture():
                tasks = [BackgroundTask(job, number) for number in range(count)]
                size = tracemalloc.get_traced_memory()[0]
        else:
            tasks = [BackgroundTask(job, number) for number in range(count)]
            size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        _starlette.uninstall()
    assert len(tasks) == count
    return size


def lookups(count: int, rounds: int) -> tuple[dict[str, list[int]], list[int], str]:
    """Timings of the lookup and of the plain scan, of the failing lookup, and its message."""
    wanted = count - 10
    with BackgroundTaskCapture() as capture:
        for number in range(count):
            BackgroundTask(job, number)
        records = capture.tasks
        samples = alternate(
            {
                "assert": lambda: timed(lambda: capture.assert_task_added(job, wanted)),
                "scan": lambda: timed(lambda: plain_scan(records, wanted)),
            },
            rounds,
        )
        assert capture.assert_task_added(job, wanted) is plain_scan(records, wanted)
        failing = [timed(lambda: failing_lookup(capture)) for _ in range(max(1, rounds // 2))]
        message = failing_lookup(capture)
    _starlette.uninstall()
    return samples, failing, message


def run(quick: bool) -> Result:
    count, rounds = (2_000, 3) if quick else (100_000, 7)
    samples, failing, message = lookups(count, rounds)
    record_bytes = (traced_bytes(count, capture=True) - traced_bytes(count, capture=False)) / count

    lookup_ms = median(samples["assert"]) / 1e6
    scan_ms = median(samples["scan"]) / 1e6
    return Result(
        name="lookup",
        measured=f"{lookup_ms:.1f} ms",
        goal=f"< {GOAL_MS:.0f} ms",
        passed=lookup_ms < GOAL_MS,
        figures=(
            f"assert_task_added {lookup_ms:.1f} ms per lookup "
            f"({lookup_ms * 1e6 / count:.0f} ns/record), "
            f"plain scan {scan_ms:.2f} ms (ratio {lookup_ms / scan_ms:.0f}x), "
            f"{record_bytes:.0f} bytes/record"
        ),
        method=(
            f"{rounds} rounds, {count:,} records, match at #{count - 10}, medians, "
            "process CPU time; memory by tracemalloc"
        ),
        notes=[
            f"failing lookup (no match, message built): {median(failing) / 1e6:.1f} ms, "
            f"message {len(message.splitlines())} lines"
        ],
    )
