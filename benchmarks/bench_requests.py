"""Request cost: what a capture adds to requests that schedule background tasks, against plain
Starlette with the plugin not installed.

A cell of the grid is one client (`TestClient`, or `httpx.AsyncClient` over `ASGITransport`),
one kind of task (`async def` or `def`, which Starlette runs in a worker thread) and a number of
tasks per request (1, 10, 100, 1,000), all scheduled through the `BackgroundTasks` that FastAPI
injects into an async endpoint. In each cell six variants send the same requests:

- `plain`: Starlette as it is without the plugin (`plain_starlette()` checks each function the
  plugin patches is Starlette's own);
- `floor`: a wrapper on `BackgroundTask.__init__` that appends `(func, args, kwargs)` to a list
  and lets the task run: the least any recorder costs;
- `mock.patch`: `mock.patch.object(BackgroundTasks, "add_task")`, what tests do by hand (tasks
  are recorded by the mock, never run);
- `run`, `defer`, `skip`: `with BackgroundTaskCapture(mode=...)`.

A sample is one block: its set-up (the capture, the patch or the wrapper), the same number of
requests (as many as plain Starlette serves in about 10 ms of CPU time: "requests per sample"),
its teardown. So every cost a mode has is in it: a deferred or skipped task is not run, which
plain Starlette does, and a capture forgets its records when it stops. The variants alternate
in each round, rotated from round to round, after a warm-up, with a full garbage collection
before every sample; the collector otherwise runs as it does in a test. A last cell, the long
capture, sends 40 requests of 1,000 async tasks in each block: a capture that holds 40,000
records, whose full collections cost more per task than a test-sized capture's.

Figures, each a median over rounds with its interquartile range, computed round by round from
variants measured side by side:
- ratio: CPU time of the variant's sample over plain Starlette's sample of the same round;
- extra cost per task: (variant's sample - plain's sample) / tasks in the sample. The goals
  take the worse client with 1,000 async tasks per request, where the fixed cost of a request
  is shared by enough tasks to vanish from the difference, in test-sized captures; the long
  capture is reported beside them (in it even the floor pays the collector for the records
  it keeps alive).

Clock: process CPU time (`process_time_ns`), the work of every thread of the process (the
`TestClient` runs the app on an event loop thread of its own, and sync tasks run in worker
threads); other work on the machine does not count. Wall time is kept as a secondary figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns, process_time_ns
from typing import get_args

from _app import JOBS, MODES, ClientName, Kind, Send, make_app, ran, recorded, recording, sender
from _common import (
    CollectorClock,
    Report,
    Result,
    Spread,
    Table,
    alternate,
    differences,
    plain_starlette,
    ratios,
)

SIZES = (1, 10, 100, 1000)
VARIANTS = ("plain", "floor", "mock.patch", *MODES)
RUNS_TASKS = {"plain", "floor", "run"}
"""The variants whose requests run their tasks; the others record or hold them only."""

GOAL_EXTRA_US = {"run": 1.5, "defer": 2.0, "skip": 1.5}
GOAL_RATIO = {1: 1.02, 100: 1.15}
PER_TASK_SIZE = 1000

SAMPLE_NS = 10_000_000
"""Each sample sends as many requests as plain Starlette serves in about this much CPU time."""
CELL_NS = 2_500_000_000
"""Rounds in a cell are cut to keep it near this much CPU time (sync tasks, 1,000 a request)."""
ROUNDS = 25
MIN_ROUNDS = 7
LONG = (40, 7)
"""The long capture: (requests per sample, rounds). Its capture holds 40,000 records by its end,
and the garbage collector's full collections walk every one that it keeps alive."""
LONG_QUICK = (3, 2)


@dataclass
class Cell:
    """One client, one kind of task, one number of tasks per request: its samples by variant."""

    client: ClientName
    kind: Kind
    size: int
    requests: int
    """Requests per sample."""
    rounds: int
    cpu: dict[str, list[int]] = field(default_factory=dict)
    wall: dict[str, list[int]] = field(default_factory=dict)
    in_gc: dict[str, list[int]] = field(default_factory=dict)

    @property
    def tasks(self) -> int:
        """Tasks per sample."""
        return self.requests * self.size

    def per_request(self, variant: str) -> Spread:
        return Spread.of([ns / self.requests / 1000 for ns in self.cpu[variant]])

    def ratio(self, variant: str) -> Spread:
        return ratios(self.cpu[variant], self.cpu["plain"])

    def wall_ratio(self, variant: str) -> Spread:
        return ratios(self.wall[variant], self.wall["plain"])

    def extra(self, variant: str) -> Spread:
        """Extra CPU µs per task over plain Starlette."""
        return differences(self.cpu[variant], self.cpu["plain"], 1 / self.tasks / 1000)

    def extra_in_gc(self, variant: str) -> Spread:
        """Of the extra µs per task, those spent in the garbage collector."""
        return differences(self.in_gc[variant], self.in_gc["plain"], 1 / self.tasks / 1000)


def measure(
    client: ClientName,
    kind: Kind,
    size: int,
    quick: bool,
    clock: CollectorClock,
    long: tuple[int, int] | None = None,
) -> Cell:
    """Measure one cell; `long` fixes (requests per sample, rounds) for the long capture."""
    with sender(client, make_app(JOBS[kind])) as send:
        plain_starlette()
        send(1, size)  # warm-up: imports, caches, the first request's lazy set-up
        if long is not None:
            requests, rounds = long
        elif quick:
            requests, rounds = 1, 2
        else:
            start = process_time_ns()
            send(2, size)
            plain_ns = max(1, (process_time_ns() - start) // 2)
            requests = max(1, min(50, round(SAMPLE_NS / plain_ns)))
            affordable = CELL_NS // (plain_ns * requests * len(VARIANTS))
            rounds = max(MIN_ROUNDS, min(ROUNDS, affordable))
        cell = Cell(client, kind, size, requests, rounds)
        samples = alternate(
            {variant: sampler(variant, send, cell, clock) for variant in VARIANTS}, rounds
        )
    plain_starlette()
    cell.cpu = {name: [cpu for cpu, _, _ in values] for name, values in samples.items()}
    cell.wall = {name: [wall for _, wall, _ in values] for name, values in samples.items()}
    cell.in_gc = {name: [in_gc for _, _, in_gc in values] for name, values in samples.items()}
    return cell


def sampler(
    variant: str, send: Send, cell: Cell, clock: CollectorClock
) -> Callable[[], tuple[int, int, int]]:
    def sample() -> tuple[int, int, int]:
        """(CPU ns, wall ns, CPU ns in the garbage collector) of one block of requests."""
        if variant not in MODES:
            plain_starlette()
        ran.clear()
        clock.total = 0
        cpu, wall = process_time_ns(), perf_counter_ns()
        with recording(variant) as recorder:
            send(cell.requests, cell.size)
        cpu, wall = process_time_ns() - cpu, perf_counter_ns() - wall
        in_gc = clock.total
        expected = cell.tasks if variant in RUNS_TASKS else 0
        assert len(ran) == expected, f"{variant}: {len(ran)} tasks ran, expected {expected}"
        seen = recorded(variant, recorder)
        assert seen == (0 if variant == "plain" else cell.tasks), f"{variant}: {seen} recorded"
        return cpu, wall, in_gc

    return sample


def run(quick: bool) -> Report:
    cells: list[Cell] = []
    with CollectorClock() as clock:
        for client in get_args(ClientName):
            for kind in get_args(Kind):
                for size in SIZES:
                    cells.append(measure(client, kind, size, quick, clock))
        long = measure(
            "TestClient", "async", PER_TASK_SIZE, quick, clock, LONG_QUICK if quick else LONG
        )
    return Report(
        results=[*per_task_results(cells, long), *ratio_results(cells)],
        tables=[ratio_table([*cells, long]), extra_table([*cells, long])],
    )


def rounds_of(cells: list[Cell]) -> str:
    low, high = min(c.rounds for c in cells), max(c.rounds for c in cells)
    return f"{low} rounds" if low == high else f"{low} to {high} rounds"


def requests_of(cells: list[Cell]) -> str:
    low, high = min(c.requests for c in cells), max(c.requests for c in cells)
    many = "request" if high == 1 else "requests"
    return f"{low} {many}" if low == high else f"{low} to {high} requests"


def per_task_results(cells: list[Cell], long: Cell) -> list[Result]:
    """The goals' per-task figures: test-sized captures (the worse client), with the long
    capture beside them, where even the floor pays the collector for the records it keeps."""
    chosen = [c for c in cells if c.kind == "async" and c.size == PER_TASK_SIZE]

    def figures(variant: str) -> str:
        return f"{variant} " + ", ".join(
            f"{c.client} {c.extra(variant).show(2, ' µs')}" for c in chosen
        )

    def in_long_capture(variant: str) -> str:
        return (
            f"{variant} {long.extra(variant).show(2, ' µs')} (of which in the garbage "
            f"collector {long.extra_in_gc(variant).show(2, ' µs')})"
        )

    results = []
    for mode in MODES:
        worst = max(chosen, key=lambda c: c.extra(mode).median)
        results.append(
            Result(
                name=f"extra cost per task, {mode} mode",
                measured=worst.extra(mode),
                unit=" µs",
                digits=2,
                goal=GOAL_EXTRA_US[mode],
                figures="; ".join(figures(variant) for variant in (mode, "floor", "mock.patch")),
                method=(
                    f"(capture in {mode} mode - plain Starlette) CPU time / tasks, round by "
                    f"round; {PER_TASK_SIZE:,} async tasks per request, {requests_of(chosen)} "
                    f"a capture, {rounds_of(chosen)}; the worse of the two clients"
                ),
                notes=[
                    "of which in the garbage collector: "
                    + ", ".join(f"{c.client} {c.extra_in_gc(mode).show(2, ' µs')}" for c in chosen),
                    f"long capture ({long.requests} TestClient requests, {long.tasks:,} records, "
                    f"{long.rounds} rounds): "
                    + "; ".join(in_long_capture(variant) for variant in (mode, "floor")),
                ],
            )
        )
    return results


def ratio_results(cells: list[Cell]) -> list[Result]:
    results = []
    for size, goal in GOAL_RATIO.items():
        chosen = [c for c in cells if c.size == size]
        many = "task" if size == 1 else "tasks"
        for mode in MODES:
            worst = max(chosen, key=lambda c: c.ratio(mode).median)
            results.append(
                Result(
                    name=f"request with {size} {many}, {mode} mode",
                    measured=worst.ratio(mode),
                    unit="x",
                    digits=3,
                    goal=goal,
                    figures=", ".join(
                        f"{c.client} {c.kind} {c.ratio(mode).show(3, 'x')}" for c in chosen
                    ),
                    method=(
                        f"CPU time, capture in {mode} mode / plain Starlette, round by round; "
                        f"{requests_of(chosen)} per sample, {rounds_of(chosen)}; the worst of "
                        "2 clients x async and sync tasks"
                    ),
                    notes=[
                        f"wall time, {worst.client} {worst.kind}: "
                        f"{worst.wall_ratio(mode).show(3, 'x')}"
                    ],
                )
            )
    return results


def ratio_table(cells: list[Cell]) -> Table:
    table = Table(
        title=(
            "Request cost: CPU time of a request relative to plain Starlette (plugin not "
            "installed), median [interquartile range] of per-round ratios. A sample is one "
            "capture (or patch) around its requests; the row of 40 requests per sample is the "
            "long capture."
        ),
        header=[
            "client",
            "tasks",
            "per request",
            "requests per sample",
            "plain µs/request",
            *VARIANTS[1:],
        ],
    )
    for c in cells:
        table.rows.append(
            [
                c.client,
                c.kind,
                f"{c.size:,}",
                str(c.requests),
                c.per_request("plain").show(0),
                *(c.ratio(variant).show(3) for variant in VARIANTS[1:]),
            ]
        )
    return table


def extra_table(cells: list[Cell]) -> Table:
    table = Table(
        title=(
            "Extra CPU µs per task over plain Starlette: (variant - plain) / tasks in the "
            "sample, median [interquartile range] over rounds. A deferred or skipped task (and "
            "a mocked `add_task`) saves running the task, which plain Starlette does: with sync "
            "tasks, a worker thread each."
        ),
        header=["client", "tasks", "per request", "requests per sample", *VARIANTS[1:], "rounds"],
    )
    for c in cells:
        table.rows.append(
            [
                c.client,
                c.kind,
                f"{c.size:,}",
                str(c.requests),
                *(c.extra(variant).show(2) for variant in VARIANTS[1:]),
                str(c.rounds),
            ]
        )
    return table
