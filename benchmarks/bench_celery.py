"""Celery: what capture costs per `.delay()`, against Celery's own way of running a task in the
sending process, `task_always_eager`.

Both run the task's body in this process, through a tracer, with nothing published: eager mode
runs `Task.apply()` inline in `.delay()`; a capture in run mode records the send (Celery builds
the message and kombu encodes it, as for a broker), then runs the message as a worker's pool
would. Each sample sends N tasks outside any request; the variants alternate in each round,
rotated. The figure is the ratio of their CPU times, round by round. The app has no result
backend in either variant.

Clock: process CPU time (`process_time_ns`).
"""

from __future__ import annotations

from time import process_time_ns
from typing import Any

from _common import Report, Result, Spread, alternate, plain_starlette, ratios
from celery import Celery

from pytest_bgtasks import BackgroundTaskCapture

GOAL = 1.2

app = Celery("bench", broker="redis://127.0.0.1:9/0")  # nothing listens: nothing connects
done: list[int] = []


@app.task(shared=False)
def send_email(number: int) -> int:
    done.append(number)
    return number


def measure(tasks: int, rounds: int) -> dict[str, list[int]]:
    def eager() -> int:
        plain_starlette()
        app.conf.task_always_eager = True
        done.clear()
        try:
            start = process_time_ns()
            for number in range(tasks):
                send_email.delay(number)
            elapsed = process_time_ns() - start
        finally:
            app.conf.task_always_eager = False
        assert len(done) == tasks
        return elapsed

    def captured() -> int:
        done.clear()
        with BackgroundTaskCapture() as capture:
            start = process_time_ns()
            for number in range(tasks):
                send_email.delay(number)
            elapsed = process_time_ns() - start
        assert len(done) == len(capture.tasks) == tasks
        return elapsed

    return alternate({"eager": eager, "captured": captured}, rounds)


def per_delay(values: list[int], tasks: int) -> Spread:
    return Spread.of([ns / tasks / 1000 for ns in values])


def run(quick: bool) -> Report:
    tasks, rounds = (50, 2) if quick else (1000, 15)
    samples: Any = measure(tasks, rounds)
    return Report(
        results=[
            Result(
                name="Celery .delay() under capture",
                measured=ratios(samples["captured"], samples["eager"]),
                unit="x",
                digits=3,
                goal=GOAL,
                figures=(
                    f"capture in run mode {per_delay(samples['captured'], tasks).show(1, ' µs')}"
                    f"/delay, task_always_eager {per_delay(samples['eager'], tasks).show(1, ' µs')}"
                    "/delay"
                ),
                method=(
                    f"CPU time, capture in run mode / Celery's task_always_eager, round by round; "
                    f"{tasks:,} sends of a task outside any request per sample, {rounds} rounds"
                ),
            )
        ]
    )
