"""Memory: the bytes a capture holds per record, after a real request.

Inside `with TestClient(app)`, one request whose endpoint adds N async tasks that do nothing
(so a task that runs keeps nothing of its own). Each variant of `_app.recording()` is set up,
then: a full collection, tracemalloc's count of traced bytes, the request, a full collection,
the count again. The difference is what the request left alive: for plain Starlette next to
nothing (the tasks go with the response), for a recorder its records and what they hold (the
function's arguments among them). The figure is (variant - plain) / N, round by round; the
list-append floor and skip mode are measured beside run and defer.
"""

from __future__ import annotations

import functools
import gc
import tracemalloc

from _app import MODES, NOOPS, make_app, recorded, recording
from _common import Report, Result, Spread, alternate, differences, plain_starlette
from starlette.testclient import TestClient

GOAL_BYTES = {"run": 250.0, "defer": 350.0}
VARIANTS = ("plain", "floor", *MODES)


def measure(tasks: int, rounds: int) -> dict[str, list[int]]:
    with TestClient(make_app(NOOPS["async"])) as client:

        def sample(variant: str) -> int:
            if variant not in MODES:
                plain_starlette()
            with recording(variant) as recorder:
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
                client.post(f"/tasks/{tasks}").raise_for_status()
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
            assert recorded(variant, recorder) == (0 if variant == "plain" else tasks)
            return held

        tracemalloc.start()
        try:
            return alternate({v: functools.partial(sample, v) for v in VARIANTS}, rounds)
        finally:
            tracemalloc.stop()
            plain_starlette()


def run(quick: bool) -> Report:
    tasks, rounds = (100, 2) if quick else (1000, 5)
    samples = measure(tasks, rounds)

    def per_record(variant: str) -> str:
        return differences(samples[variant], samples["plain"], 1 / tasks).show(0, " bytes")

    results = []
    for mode, goal in GOAL_BYTES.items():
        results.append(
            Result(
                name=f"bytes per record, {mode} mode",
                measured=differences(samples[mode], samples["plain"], 1 / tasks),
                unit=" bytes",
                digits=0,
                goal=goal,
                figures=(
                    f"floor {per_record('floor')}, skip mode {per_record('skip')}; plain "
                    f"Starlette keeps {Spread.of(samples['plain']).show(0)} "
                    "bytes after the request"
                ),
                method=(
                    f"tracemalloc, bytes alive after one TestClient request adding {tasks:,} "
                    f"async tasks, (capture in {mode} mode - plain) / tasks, round by round; "
                    f"{rounds} rounds"
                ),
            )
        )
    return Report(results=results)
