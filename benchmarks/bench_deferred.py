"""`run_deferred()` cost: running held tasks, per task, over what running the same tasks costs
Starlette itself.

Set-up of a sample (not timed): inside `with TestClient(app)`, a capture in defer mode and one
request whose endpoint adds N tasks, which the capture holds. Timed: `capture.run_deferred()`,
which runs them on the client's event loop (the loop they were deferred on), as a test using
`bg_client` does. Its baseline, the task's own cost: the same number of fresh tasks in a plain
Starlette `BackgroundTasks`, called on the same event loop through the client's portal, one hop
from the test's thread as `run_deferred()` makes one. Both alternate in each round, rotated;
the figure is (run_deferred - Starlette's batch) / N, round by round. Sync tasks (each in a
worker thread, in both) are a secondary figure.

Clock: process CPU time (`process_time_ns`), every thread of the process.
"""

from __future__ import annotations

from time import process_time_ns

from _app import JOBS, Kind, make_app, ran
from _common import Report, Result, Spread, alternate, differences, plain_starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.testclient import TestClient

from pytest_bgtasks import BackgroundTaskCapture

GOAL_US = 10.0


def measure(kind: Kind, tasks: int, rounds: int) -> dict[str, list[int]]:
    job = JOBS[kind]
    with TestClient(make_app(job)) as client:

        def deferred() -> int:
            plain_starlette()
            with BackgroundTaskCapture(mode="defer") as capture:
                client.post(f"/tasks/{tasks}").raise_for_status()
                assert len(capture.deferred) == tasks
                ran.clear()
                start = process_time_ns()
                capture.run_deferred()
                elapsed = process_time_ns() - start
            assert len(ran) == tasks
            return elapsed

        def starlette() -> int:
            plain_starlette()
            batch = BackgroundTasks([BackgroundTask(job, number) for number in range(tasks)])
            ran.clear()
            assert client.portal is not None
            start = process_time_ns()
            client.portal.call(batch)
            elapsed = process_time_ns() - start
            assert len(ran) == tasks
            return elapsed

        samples = alternate({"run_deferred": deferred, "starlette": starlette}, rounds)
    plain_starlette()
    return samples


def per_task(values: list[int], tasks: int) -> Spread:
    return Spread.of([ns / tasks / 1000 for ns in values])


def extra(samples: dict[str, list[int]], tasks: int) -> Spread:
    """Extra µs per task of `run_deferred()` over Starlette's own batch, round by round."""
    return differences(samples["run_deferred"], samples["starlette"], 1 / tasks / 1000)


def run(quick: bool) -> Report:
    tasks, sync_tasks, rounds = (100, 10, 2) if quick else (1000, 100, 15)
    samples = measure("async", tasks, rounds)
    sync = measure("sync", sync_tasks, rounds)
    return Report(
        results=[
            Result(
                name="run_deferred per task",
                measured=extra(samples, tasks),
                unit=" µs",
                digits=2,
                goal=GOAL_US,
                figures=(
                    f"run_deferred {per_task(samples['run_deferred'], tasks).show(2, ' µs')}/task,"
                    f" Starlette's batch {per_task(samples['starlette'], tasks).show(2, ' µs')}"
                    "/task"
                ),
                method=(
                    f"(run_deferred - the same tasks in a plain BackgroundTasks) / tasks, round "
                    f"by round; {tasks:,} async tasks held from one TestClient request, run on "
                    f"its event loop; {rounds} rounds, process CPU time"
                ),
                notes=[
                    f"sync tasks ({sync_tasks:,}): {extra(sync, sync_tasks).show(2, ' µs')}/task "
                    f"over Starlette's batch ("
                    f"{per_task(sync['run_deferred'], sync_tasks).show(1, ' µs')} vs "
                    f"{per_task(sync['starlette'], sync_tasks).show(1, ' µs')})"
                ],
            )
        ]
    )
