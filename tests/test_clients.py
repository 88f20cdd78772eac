"""Capture works whatever drives the app: TestClient on httpx or httpx2, a real uvicorn server
on the loopback, mounted sub-apps. httpx.AsyncClient, and many requests at once: test_load.py."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import starlette
import starlette.testclient
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import Response
from starlette.testclient import TestClient

import apps
from apps import boom, sync_job
from pytest_bgtasks import BackgroundTaskCapture, TaskRequest, TaskStatus

STARLETTE = tuple(int(part) for part in starlette.__version__.split(".")[:2])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """A real uvicorn server for `app` in this process, on a free loopback port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_real_uvicorn_server_on_the_loopback(bgtasks: BackgroundTaskCapture) -> None:
    app = apps.fastapi_app((sync_job, ("over the network",)))
    with serve(app) as url:
        assert httpx.post(f"{url}/work").status_code == 200
        # The client has its response before the task runs: wait for the task.
        wait_until(lambda: bool(bgtasks.tasks) and bgtasks.tasks[0].status is TaskStatus.RAN)

    record = bgtasks.assert_task_ran(sync_job, "over the network")
    assert record.request == TaskRequest("POST", "/work")
    assert record.added_at == apps.site("fastapi")


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_task_failing_under_uvicorn_is_reported(bgtasks: BackgroundTaskCapture) -> None:
    app = apps.fastapi_app((boom, ("server side",)))
    with serve(app) as url:
        assert httpx.post(f"{url}/work").status_code == 200
        wait_until(lambda: bool(bgtasks.failed))
    # uvicorn logs the exception; the test never sees it.
    (message,) = [finding.message for finding in bgtasks.findings()]
    assert "- boom('server side') [failed] POST /work" in message


def test_a_mounted_sub_app_reports_the_full_path(bgtasks: BackgroundTaskCapture) -> None:
    outer = FastAPI()
    outer.mount("/api", apps.fastapi_app((sync_job, ("mounted",))))
    with TestClient(outer) as client:
        assert client.post("/api/work").status_code == 200
    assert bgtasks.assert_task_ran(sync_job, "mounted").request == TaskRequest("POST", "/api/work")


def test_the_test_client_on_the_installed_httpx(bgtasks: BackgroundTaskCapture) -> None:
    flavour = starlette.testclient.httpx.__name__
    try:
        import httpx2  # noqa: F401

        has_httpx2 = True
    except ImportError:
        has_httpx2 = False
    # From Starlette 1.2 the TestClient prefers httpx2 when it is installed; before, httpx.
    assert flavour == ("httpx2" if STARLETTE >= (1, 2) and has_httpx2 else "httpx")
    with TestClient(apps.fastapi_app((sync_job, (flavour,)))) as client:
        client.post("/work")
    bgtasks.assert_task_ran(sync_job, flavour)


# -- context -----------------------------------------------------------------------------------

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def context_app(seen: list[tuple[str, str, str]]) -> FastAPI:
    """Middleware and endpoint set context variables; sync and async tasks report them."""

    class RequestId(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Response:
            request_id.set("r-1")
            response: Response = await call_next(request)
            return response

    def sync_task() -> None:
        seen.append(("sync", tenant.get(), request_id.get()))

    async def async_task() -> None:
        seen.append(("async", tenant.get(), request_id.get()))

    app = FastAPI()
    app.add_middleware(RequestId)

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        tenant.set("acme")
        background_tasks.add_task(sync_task)
        background_tasks.add_task(async_task)
        return {}

    return app


def test_tasks_see_the_context_variables_they_see_without_the_plugin(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with_plugin: list[tuple[str, str, str]] = []
    with TestClient(context_app(with_plugin)) as client:
        client.post("/work")

    bgtasks.stop()  # the same request with nothing capturing
    try:
        without_plugin: list[tuple[str, str, str]] = []
        with TestClient(context_app(without_plugin)) as client:
            client.post("/work")
    finally:
        bgtasks.start()

    assert with_plugin == without_plugin
    assert with_plugin == [("sync", "acme", "r-1"), ("async", "acme", "r-1")]


# -- bg_client ---------------------------------------------------------------------------------

lifecycle: list[str] = []


@pytest.fixture
def app() -> FastAPI:
    lifecycle.clear()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lifecycle.append("startup")
        yield
        lifecycle.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        tenant.set("acme")

        async def report() -> None:
            asyncio.get_running_loop()  # on a live loop
            lifecycle.append(f"task for {tenant.get()}")

        background_tasks.add_task(report)
        return {}

    return app


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_in_a_bg_client_test_runs_before_lifespan_shutdown(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture
) -> None:
    bg_client.post("/work")
    assert lifecycle == ["startup"]
    bgtasks.run_deferred()
    assert lifecycle == ["startup", "task for acme"]
    assert tenant.get() == "none"  # the task's context, not the test's
