"""Small real apps, one per way an app schedules a background task.

Each `add_task`/`BackgroundTask` line carries a `# site:<name>` comment so tests can check the
call site a record reports.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pytest_bgtasks import TaskRecord, TaskStatus

with contextlib.suppress(ImportError):  # no FastAPI: starlette_app() and the tasks still work
    from fastapi import BackgroundTasks, Depends, FastAPI

ran: list[tuple[str, Any]] = []
"""What the tasks below did, in order; emptied before each test."""


def sync_job(value: str, *, flag: bool = False) -> None:
    ran.append(("sync_job", value))


async def async_job(value: str, *, flag: bool = False) -> None:
    ran.append(("async_job", value))


def boom(value: str = "") -> None:
    raise ZeroDivisionError(f"boom {value}".strip())


class Mailer:
    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, to: str) -> None:
        ran.append((f"{self.name}.send", to))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mailer) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Notifier:
    def __call__(self, to: str) -> None:
        ran.append(("Notifier", to))


def assert_carried_its_own(records: list[TaskRecord]) -> TaskRecord:
    """The injected task was dropped, and the response's own `async_job("own")` ran instead:
    the dropped record."""
    dropped, own = records
    assert dropped.status is TaskStatus.DROPPED
    assert dropped.reason == (
        "never run: the response carried async_job('own') instead; an endpoint that returns a "
        "response with its own `background` replaces the injected BackgroundTasks"
    )
    assert own.status is TaskStatus.RAN
    return dropped


def site(name: str, path: str = __file__) -> str:
    """'tests/apps.py:LINE' of the line marked `# site:<name>` (in `path`, this file by default),
    as a record reports it."""
    with open(path) as source:
        for number, line in enumerate(source, start=1):
            if line.rstrip().endswith(f"# site:{name}"):
                return f"{os.path.relpath(path)}:{number}"
    raise LookupError(name)


WAYS = ("injected", "dependency", "sub_dependency", "batch", "batch_from_list", "response")
"""How an endpoint schedules `func("x")`, one app for each."""


def scheduling_app(way: str, func: Callable[..., Any]) -> FastAPI:
    app = FastAPI()

    def from_dependency(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(func, "x")  # site:dependency

    def from_sub_dependency(_: None = Depends(from_dependency)) -> None:
        pass

    if way == "injected":

        @app.post("/work")
        def injected(background_tasks: BackgroundTasks) -> dict[str, str]:
            background_tasks.add_task(func, "x")  # site:injected
            return {}

    elif way in ("dependency", "sub_dependency"):
        dependency = from_dependency if way == "dependency" else from_sub_dependency

        @app.post("/work", dependencies=[Depends(dependency)])
        def with_dependency() -> dict[str, str]:
            return {}

    elif way == "batch":

        @app.post("/work")
        def batch() -> Response:
            tasks = StarletteBackgroundTasks()
            tasks.add_task(func, "x")  # site:batch
            return JSONResponse({}, background=tasks)

    elif way == "batch_from_list":

        @app.post("/work")
        def batch_from_list() -> Response:
            task = BackgroundTask(func, "x")  # site:batch_from_list
            return JSONResponse({}, background=StarletteBackgroundTasks([task]))

    else:
        assert way == "response"

        @app.post("/work")
        def response() -> Response:
            return JSONResponse({}, background=BackgroundTask(func, "x"))  # site:response

    return app


def starlette_app(*tasks: tuple[Callable[..., Any], tuple[Any, ...]]) -> Starlette:
    """A plain Starlette app whose `POST /work` runs `tasks` after its response."""

    async def work(request: Request) -> Response:
        batch = StarletteBackgroundTasks()
        for func, args in tasks:
            batch.add_task(func, *args)  # site:starlette
        return JSONResponse({}, background=batch)

    return Starlette(routes=[Route("/work", work, methods=["POST"])])


def fastapi_app(*tasks: tuple[Callable[..., Any], tuple[Any, ...]]) -> FastAPI:
    """A FastAPI app whose `POST /work` adds `tasks` to its injected BackgroundTasks."""
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        for func, args in tasks:
            background_tasks.add_task(func, *args)  # site:fastapi
        return {}

    return app


partial_job = functools.partial(sync_job, "from-partial")
