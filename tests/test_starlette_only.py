"""The plugin on plain Starlette apps, with nothing of FastAPI: FastAPI is optional. In the
matrix's starlette-only environment (no FastAPI installed) these tests, with the other modules
that need no FastAPI, are the suite; everywhere else they run beside the rest."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

import apps
from apps import async_job, boom, sync_job
from pytest_bgtasks import BackgroundTaskCapture, TaskRequest, TaskStatus, assert_task_ran


def one_route(endpoint: Callable[[Request], Awaitable[Response]], path: str = "/work") -> Starlette:
    return Starlette(routes=[Route(path, endpoint, methods=["POST"])])


def post(app: Starlette, path: str = "/work", **client: Any) -> int:
    with TestClient(app, **client) as test_client:
        return test_client.post(path).status_code


@pytest.mark.parametrize("func", [sync_job, async_job], ids=["def", "async-def"])
@pytest.mark.parametrize("way", ["response", "batch", "batch_from_list"])
def test_each_way_a_starlette_endpoint_schedules_is_recorded(
    bgtasks: BackgroundTaskCapture, way: str, func: Callable[[str], object]
) -> None:
    async def work(request: Request) -> Response:
        if way == "response":
            background: BackgroundTask = BackgroundTask(func, "x")
        elif way == "batch":
            background = BackgroundTasks()
            background.add_task(func, "x")
        else:
            background = BackgroundTasks([BackgroundTask(func, "x")])
        return PlainTextResponse("ok", background=background)

    assert post(one_route(work)) == 200

    (record,) = bgtasks.tasks
    assert record.func is func
    assert record.args == ("x",)
    assert record.request == TaskRequest("POST", "/work")
    assert record.added_at is not None
    assert record.added_at.startswith("tests/test_starlette_only.py:")
    assert record.status is TaskStatus.RAN
    assert apps.ran == [(record.name, "x")]


def test_a_mounted_starlette_app_reports_the_full_path(bgtasks: BackgroundTaskCapture) -> None:
    outer = Starlette(routes=[Mount("/api", apps.starlette_app((sync_job, ("mounted",))))])
    assert post(outer, "/api/work") == 200
    record = assert_task_ran(sync_job, "mounted")
    assert record.request == TaskRequest("POST", "/api/work")
    assert record.added_at == apps.site("starlette")


def test_an_error_in_a_mounted_app_is_one_request_with_the_outer_app(
    bgtasks: BackgroundTaskCapture,
) -> None:
    async def refused(request: Request) -> Response:
        BackgroundTasks().add_task(sync_job, "refused")
        raise KeyError("no such order")

    class Swallow:  # past the mounted app, which sent its 500 already
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            with contextlib.suppress(KeyError):
                await self.app(scope, receive, send)

    inner = Starlette(routes=[Route("/work", refused, methods=["POST"])])
    outer = Starlette(routes=[Mount("/api", inner)], middleware=[Middleware(Swallow)])
    assert post(outer, "/api/work") == 500

    (record,) = bgtasks.dropped
    assert record.request == TaskRequest("POST", "/api/work")
    assert record.reason == (
        "never run: the endpoint raised KeyError('no such order'), answered with 500"
    )


@pytest.mark.bgtasks(mode="defer")
def test_defer_then_run_on_the_clients_live_loop(bgtasks: BackgroundTaskCapture) -> None:
    app = apps.starlette_app((sync_job, ("a",)), (async_job, ("b",)))
    with TestClient(app) as client:
        client.post("/work")
        assert apps.ran == []
        assert [record.status for record in bgtasks.tasks] == [TaskStatus.DEFERRED] * 2
        assert bgtasks.run_deferred(only=async_job) == [bgtasks.tasks[1]]
    assert apps.ran == [("async_job", "b")]
    bgtasks.run_deferred()  # the client's loop is gone: a new one
    assert apps.ran == [("async_job", "b"), ("sync_job", "a")]


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_failing_task_stops_the_rest_and_a_hidden_failure_is_reported(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = apps.starlette_app((boom, ("first",)), (sync_job, ("second",)))
    with pytest.raises(ZeroDivisionError):
        post(app)
    assert bgtasks.findings() == []  # the test saw it

    with bgtasks.capture() as hidden:
        assert post(app, raise_server_exceptions=False) == 200
    failed, not_run = hidden.tasks
    assert (failed.status, not_run.status) == (TaskStatus.FAILED, TaskStatus.NOT_RUN)
    (message,) = [finding.message for finding in bgtasks.findings()]
    assert message.startswith(
        "1 background task raised and the test never saw the exception (the client or a "
        "middleware hid it):\n- boom('first') [failed] POST /work"
    )
    assert apps.ran == []


def test_rules_on_a_starlette_app(bgtasks: BackgroundTaskCapture) -> None:
    replaced: list[str] = []
    bgtasks.replace(sync_job, replaced.append)
    bgtasks.skip(async_job)
    assert post(apps.starlette_app((sync_job, ("a",)), (async_job, ("b",)))) == 200
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN, TaskStatus.SKIPPED]
    assert replaced == ["a"]
    assert apps.ran == []


def test_an_error_handled_by_starlettes_middleware_outside_any_starlette_app_is_answered_as_usual(
    bgtasks: BackgroundTaskCapture,
) -> None:
    """Starlette's exception middleware around a bare ASGI app: no request of the plugin's."""
    from starlette.middleware.exceptions import ExceptionMiddleware

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        raise HTTPException(404, "nothing here")

    response = TestClient(ExceptionMiddleware(bare)).post("/work")  # no lifespan
    assert (response.status_code, response.text) == (404, "nothing here")
    assert bgtasks.tasks == []


@pytest.mark.bgtasks(on_dropped="ignore")  # this test checks the verdict itself
def test_dropped_tasks_of_a_starlette_app(bgtasks: BackgroundTaskCapture) -> None:
    async def forgotten(request: Request) -> Response:
        BackgroundTasks().add_task(sync_job, "forgotten")
        return PlainTextResponse("ok")

    async def refused(request: Request) -> Response:
        BackgroundTasks().add_task(sync_job, "refused")
        raise HTTPException(403, "not yours")

    app = Starlette(
        routes=[Route("/forgotten", forgotten, methods=["POST"]), Route("/refused", refused)]
    )
    assert post(app, "/forgotten") == 200
    with TestClient(app) as client:
        assert client.get("/refused").status_code == 403

    never, refused_task = bgtasks.dropped
    assert never.reason is not None
    assert never.reason.startswith("never run: no response carried it")
    assert refused_task.reason == (
        "never run: the endpoint raised HTTPException(status_code=403, detail='not yours'), "
        "answered with 403"
    )
    (message,) = [
        finding.message for finding in bgtasks.findings()
    ]  # the first is a finding, the second is not
    assert "sync_job('forgotten') [dropped] POST /forgotten" in message
    assert "refused" not in message
    assert apps.ran == []


PROJECT = """
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.responses import PlainTextResponse
from starlette.routing import Route

sent = []

def send_welcome_email(email):
    sent.append(email)

async def signup(request):
    return PlainTextResponse("ok", background=BackgroundTask(send_welcome_email, "a@b.com"))

async def forgetful(request):
    BackgroundTasks().add_task(send_welcome_email, "lost")
    return PlainTextResponse("ok")

@pytest.fixture
def app():
    sent.clear()
    return Starlette(routes=[
        Route("/signup", signup, methods=["POST"]),
        Route("/forgetful", forgetful, methods=["POST"]),
    ])
"""


def test_the_plugin_surface_with_a_starlette_app(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(PROJECT)
    pytester.makepyfile(
        """
        import pytest
        from conftest import send_welcome_email, sent
        from pytest_bgtasks import assert_task_added

        def test_signup(bg_client):
            assert bg_client.post("/signup").status_code == 200
            assert_task_added(send_welcome_email, "a@b.com")
            assert sent == ["a@b.com"]

        @pytest.mark.bgtasks(mode="defer")
        def test_later(bg_client, bgtasks):
            bg_client.post("/signup")
            assert sent == []
            bgtasks.run_deferred()
            assert sent == ["a@b.com"]

        def test_failing(bg_client):
            bg_client.post("/signup")
            assert_task_added(send_welcome_email, "b@b.com")

        def test_dropped(bg_client):
            bg_client.post("/forgetful")
        """
    )
    result = pytester.runpytest("--assert=plain")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "bgtasks: mode=run",
            "*ERROR at teardown of test_dropped*",
            "1 background task was added but never run: no response carried it.",
            "- send_welcome_email('lost') [dropped] POST /forgetful  (conftest.py:16)",
            "*_ test_failing _*",
            "*- Captured background tasks -*",
            "POST /signup, answered with 200",
            "  - send_welcome_email('a@b.com')  ran  conftest.py:13",
        ]
    )
