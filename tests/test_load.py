"""Many requests at once: every task is recorded once, on the request that scheduled it, and
runs (at once, or when the test runs what was held).

200 requests go through `httpx.AsyncClient` concurrently, and 200 through one `TestClient`
from 8 threads. Half go to a `def` endpoint (run in the threadpool), half to an `async def`
one; each adds 5 tasks, sync and async in turn, whose arguments carry the request's id.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Literal

import anyio
import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from starlette.testclient import TestClient

import apps
from pytest_bgtasks import BackgroundTaskCapture, TaskRecord, TaskRequest, TaskStatus

REQUESTS = 200
TASKS_PER_REQUEST = 5
THREADS = 8


def sync_task(request_id: int, n: int) -> None:
    apps.ran.append(("sync_task", (request_id, n)))


async def async_task(request_id: int, n: int) -> None:
    await anyio.sleep(0)
    apps.ran.append(("async_task", (request_id, n)))


def task_for(n: int) -> Callable[[int, int], object]:
    return sync_task if n % 2 == 0 else async_task


def load_app() -> FastAPI:
    """`POST /def/{id}` and `POST /async-def/{id}` each add 5 tasks, yielding between them so
    that concurrent requests interleave their add_task calls."""
    app = FastAPI()

    @app.post("/def/{request_id}")
    def sync_endpoint(request_id: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        for n in range(TASKS_PER_REQUEST):
            background_tasks.add_task(task_for(n), request_id, n)
            time.sleep(0)
        return {"id": request_id}

    @app.post("/async-def/{request_id}")
    async def async_endpoint(request_id: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        for n in range(TASKS_PER_REQUEST):
            background_tasks.add_task(task_for(n), request_id, n)
            await asyncio.sleep(0)
        return {"id": request_id}

    return app


def path(request_id: int) -> str:
    return f"/{'def' if request_id % 2 == 0 else 'async-def'}/{request_id}"


def assert_each_request_has_its_own_tasks(records: list[TaskRecord], status: TaskStatus) -> None:
    """Exactly 5 of `records` per request, in the order it added them, with its id in their
    arguments and its path in their request; each record once."""
    assert len(records) == len({id(record) for record in records}) == REQUESTS * TASKS_PER_REQUEST
    by_request: dict[int, list[TaskRecord]] = defaultdict(list)
    for record in records:
        request_id, _ = record.args
        assert record.request == TaskRequest("POST", path(request_id)), record
        assert record.status is status, record
        by_request[request_id].append(record)
    assert sorted(by_request) == list(range(REQUESTS))
    for request_id, own in by_request.items():
        assert [(record.func, record.args) for record in own] == [
            (task_for(n), (request_id, n)) for n in range(TASKS_PER_REQUEST)
        ]


def assert_recorded(bgtasks: BackgroundTaskCapture, status: TaskStatus) -> None:
    """The capture holds every task once, indexed in scheduling order."""
    assert [record.index for record in bgtasks.tasks] == list(range(REQUESTS * TASKS_PER_REQUEST))
    assert_each_request_has_its_own_tasks(bgtasks.tasks, status)


def interleaved(records: list[TaskRecord]) -> bool:
    """Whether some request's tasks were not scheduled one right after the other."""
    positions: dict[object, list[int]] = defaultdict(list)
    for position, record in enumerate(records):
        positions[record.request].append(position)
    return any(own[-1] - own[0] >= len(own) for own in positions.values())


def assert_ran_held_tasks(bgtasks: BackgroundTaskCapture, ran: list[TaskRecord]) -> None:
    """run_deferred() ran every held task once: in the order they were held, which keeps each
    request's own order (across requests, it is the order the responses finished)."""
    assert sorted(ran, key=lambda record: record.index) == bgtasks.tasks
    assert_each_request_has_its_own_tasks(ran, TaskStatus.RAN)
    assert bgtasks.deferred == []


def assert_every_task_ran_once() -> None:
    assert sorted(apps.ran) == sorted(
        (task_for(n).__name__, (request_id, n))
        for request_id in range(REQUESTS)
        for n in range(TASKS_PER_REQUEST)
    )


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["run", "defer"])
async def test_concurrent_requests_through_async_client(
    bgtasks: BackgroundTaskCapture, mode: Literal["run", "defer"]
) -> None:
    bgtasks.mode = mode
    transport = httpx.ASGITransport(app=load_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(*(client.post(path(n)) for n in range(REQUESTS)))
    assert [response.json() for response in responses] == [{"id": n} for n in range(REQUESTS)]
    assert interleaved(bgtasks.tasks)  # the requests did run at the same time

    if mode == "defer":
        assert_recorded(bgtasks, TaskStatus.DEFERRED)
        assert apps.ran == []
        assert_ran_held_tasks(bgtasks, await bgtasks.arun_deferred())
    assert_recorded(bgtasks, TaskStatus.RAN)
    assert_every_task_ran_once()


@pytest.mark.parametrize("mode", ["run", "defer"])
def test_one_test_client_from_eight_threads(
    bgtasks: BackgroundTaskCapture, mode: Literal["run", "defer"]
) -> None:
    bgtasks.mode = mode
    with TestClient(load_app()) as client:
        with concurrent.futures.ThreadPoolExecutor(max_workers=THREADS) as pool:
            responses = list(pool.map(lambda n: client.post(path(n)), range(REQUESTS)))
        assert [response.json() for response in responses] == [{"id": n} for n in range(REQUESTS)]

        if mode == "defer":
            assert_recorded(bgtasks, TaskStatus.DEFERRED)
            assert apps.ran == []
            assert_ran_held_tasks(bgtasks, bgtasks.run_deferred())
    assert_recorded(bgtasks, TaskStatus.RAN)
    assert_every_task_ran_once()
