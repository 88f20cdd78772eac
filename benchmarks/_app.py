"""The app the request benchmarks drive, the clients that drive it, and the ways of recording
its tasks that are measured beside the plugin: the list-append floor and `mock.patch.object`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal
from unittest import mock

import fastapi
import httpx
from fastapi import FastAPI
from starlette.background import BackgroundTask
from starlette.testclient import TestClient

from pytest_bgtasks import BackgroundTaskCapture

Mode = Literal["run", "defer", "skip"]
MODES: tuple[Mode, ...] = ("run", "defer", "skip")
Kind = Literal["async", "sync"]
ClientName = Literal["TestClient", "AsyncClient"]

ran: list[int] = []
"""One entry per task run, so that each variant can check it ran (or held) every task."""


async def async_job(number: int) -> None:
    ran.append(number)


def sync_job(number: int) -> None:
    ran.append(number)


async def async_noop(number: int) -> None:
    pass


def sync_noop(number: int) -> None:
    pass


JOBS: dict[Kind, Callable[[int], Any]] = {"async": async_job, "sync": sync_job}
NOOPS: dict[Kind, Callable[[int], Any]] = {"async": async_noop, "sync": sync_noop}


def make_app(job: Callable[[int], Any]) -> FastAPI:
    """`POST /tasks/{count}`: an async endpoint that adds `count` tasks `job(i)` to the
    `BackgroundTasks` FastAPI injects, as an app does."""
    app = FastAPI()

    @app.post("/tasks/{count}")
    async def add_tasks(count: int, background_tasks: fastapi.BackgroundTasks) -> dict[str, int]:
        for number in range(count):
            background_tasks.add_task(job, number)
        return {"count": count}

    return app


Send = Callable[[int, int], None]
"""`send(requests, tasks)`: that many requests in turn, each adding that many tasks."""


@contextlib.contextmanager
def sender(client: ClientName, app: FastAPI) -> Iterator[Send]:
    """Requests to `app` through one client kept open, as a test's client is: `TestClient`
    entered as a context manager (lifespan on, one event loop thread, as `bg_client` does), or
    `httpx.AsyncClient` over `ASGITransport` on an event loop of this thread."""
    if client == "TestClient":
        with TestClient(app) as test_client:

            def send_sync(requests: int, tasks: int) -> None:
                for _ in range(requests):
                    test_client.post(f"/tasks/{tasks}").raise_for_status()

            yield send_sync
        return
    loop = asyncio.new_event_loop()
    async_client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bench"
    )

    async def send_all(requests: int, tasks: int) -> None:
        for _ in range(requests):
            (await async_client.post(f"/tasks/{tasks}")).raise_for_status()

    try:
        yield lambda requests, tasks: loop.run_until_complete(send_all(requests, tasks))
    finally:
        loop.run_until_complete(async_client.aclose())
        loop.close()


@contextlib.contextmanager
def floor() -> Iterator[list[tuple[Any, tuple[Any, ...], dict[str, Any]]]]:
    """The least a recorder can do: a wrapper on `BackgroundTask.__init__` (which sees every
    task, however it is scheduled) that appends `(func, args, kwargs)` to a list and lets the
    task be made, and run, as usual."""
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
    original = BackgroundTask.__dict__["__init__"]
    append = calls.append

    def init(self: BackgroundTask, func: Any, *args: Any, **kwargs: Any) -> None:
        append((func, args, kwargs))
        original(self, func, *args, **kwargs)

    with mock.patch.object(BackgroundTask, "__init__", init):
        yield calls


@contextlib.contextmanager
def patched_add_task() -> Iterator[mock.MagicMock]:
    """What tests do by hand without the plugin (its README's migration section): replace
    `add_task` with a mock, which records calls and runs nothing."""
    with mock.patch.object(fastapi.BackgroundTasks, "add_task") as add_task:
        yield add_task


@contextlib.contextmanager
def recording(variant: str) -> Iterator[Any]:
    """Record the tasks as the variant does: not at all (`plain`), `floor()`,
    `patched_add_task()`, or a capture in that mode."""
    if variant == "plain":
        yield None
    elif variant == "floor":
        with floor() as calls:
            yield calls
    elif variant == "mock.patch":
        with patched_add_task() as add_task:
            yield add_task
    else:
        [mode] = [mode for mode in MODES if mode == variant]
        with BackgroundTaskCapture(mode=mode) as capture:
            yield capture


def recorded(variant: str, recorder: Any) -> int:
    """How many tasks the variant's recorder saw."""
    if variant == "plain":
        return 0
    if variant == "floor":
        return len(recorder)
    if variant == "mock.patch":
        return int(recorder.call_count)
    return len(recorder.tasks)
