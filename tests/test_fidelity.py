"""Records that tell the truth in the situations production hides: dropped tasks, failures
nobody sees, cancelled responses, misuse. Each test pins the record and the app's behaviour."""

from __future__ import annotations

import _thread
import concurrent.futures
import contextlib
import importlib.metadata
import linecache
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, ClassVar

import anyio
import fastapi
import httpx
import pytest
import starlette
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, WebSocket
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

import apps
from apps import async_job, boom, sync_job
from pytest_bgtasks import BackgroundTaskCapture, TaskRequest, TaskStatus

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

STARLETTE = tuple(int(part) for part in starlette.__version__.split(".")[:2])
FASTAPI = tuple(int(part) for part in fastapi.__version__.split(".")[:2])
ANYIO = tuple(int(part) for part in importlib.metadata.version("anyio").split(".")[:2])
NOT_CARRIED = (
    "never run: no response carried it (it was never given to the response that was sent: set "
    "on the injected `response` parameter, lost by a route class or middleware that rebuilt the "
    "response, or never passed as `background=`)"
)

# -- silent drops ----------------------------------------------------------------------------


@pytest.mark.bgtasks(on_dropped="ignore")
def test_an_endpoint_returning_its_own_background_drops_the_injected_tasks(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/signup")
    def signup(background_tasks: BackgroundTasks) -> JSONResponse:
        background_tasks.add_task(sync_job, "welcome")
        return JSONResponse({}, background=BackgroundTask(async_job, "own"))

    with TestClient(app) as client:
        assert client.post("/signup").status_code == 200

    dropped = apps.assert_carried_its_own(bgtasks.tasks)
    assert apps.ran == [("async_job", "own")]
    (finding,) = bgtasks.findings()
    assert finding.kind == "dropped"
    assert finding.records == (dropped,)
    assert finding.message.startswith("1 background task was added but never run")


@pytest.mark.bgtasks(on_dropped="ignore")
@pytest.mark.parametrize("own", ["task", "batch"])
def test_what_an_endpoint_made_besides_its_own_background_is_dropped(
    bgtasks: BackgroundTaskCapture, own: str
) -> None:
    app = FastAPI()

    @app.post("/signup")
    def signup(background_tasks: BackgroundTasks) -> JSONResponse:
        if own == "task":  # two tasks made apart, never attached to anything
            BackgroundTask(sync_job, "welcome")  # site:made-apart
            BackgroundTask(sync_job, "audit")  # site:made-apart-too
            return JSONResponse({}, background=BackgroundTask(async_job, "own"))
        background_tasks.add_task(sync_job, "welcome")  # site:injected
        background_tasks.add_task(sync_job, "audit")  # site:injected-too
        batch = StarletteBackgroundTasks()
        batch.add_task(async_job, "own")
        return JSONResponse({}, background=batch)

    with TestClient(app) as client:
        assert client.post("/signup").status_code == 200

    reason = (
        "    never run: the response carried async_job('own') instead; an endpoint that returns "
        "a response with its own `background` replaces the injected BackgroundTasks"
    )
    first, second = (
        ("made-apart", "made-apart-too") if own == "task" else ("injected", "injected-too")
    )
    assert [finding.message for finding in bgtasks.findings()] == [
        "2 background tasks were added but never run: no response carried them.\n"
        f"- sync_job('welcome') [dropped] POST /signup  ({apps.site(first, __file__)})\n"
        f"{reason}\n"
        f"- sync_job('audit') [dropped] POST /signup  ({apps.site(second, __file__)})\n"
        f"{reason}\n"
        'If this is expected, use @pytest.mark.bgtasks(on_dropped="warn") or "ignore".\n'
        "See https://pytest-bgtasks.github.io/pytest-bgtasks/catches/#dropped"
    ]
    assert apps.ran == [("async_job", "own")]


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_batch_never_attached_to_the_response_is_dropped(bgtasks: BackgroundTaskCapture) -> None:
    async def work(request: Request) -> Response:
        tasks = StarletteBackgroundTasks()
        tasks.add_task(sync_job, "forgotten")
        return PlainTextResponse("done")  # background=tasks forgotten

    with TestClient(Starlette(routes=[Route("/work", work, methods=["POST"])])) as client:
        client.post("/work")

    (record,) = bgtasks.dropped
    assert record.reason == NOT_CARRIED
    assert bgtasks.findings() != []
    assert apps.ran == []


@pytest.mark.bgtasks(on_dropped="ignore")
def test_background_set_on_the_injected_response_parameter_is_dropped(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(response: Response) -> dict[str, str]:
        response.background = BackgroundTask(sync_job, "on the parameter")
        return {}

    with TestClient(app) as client:
        assert client.post("/work").status_code == 200

    (record,) = bgtasks.dropped
    assert record.reason == NOT_CARRIED
    assert bgtasks.findings() != []
    assert apps.ran == []


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_route_class_that_rebuilds_the_response_drops_its_tasks(
    bgtasks: BackgroundTaskCapture,
) -> None:
    class Rebuild(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def rebuilt(request: Request) -> Response:
                response = await handler(request)
                return Response(response.body, response.status_code, media_type="text/plain")

            return rebuilt

    app = FastAPI()
    app.router.route_class = Rebuild

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "lost")
        return {}

    with TestClient(app) as client:
        assert client.post("/work").status_code == 200

    (record,) = bgtasks.dropped
    assert record.reason == NOT_CARRIED
    assert apps.ran == []


def test_a_middleware_that_rebuilds_the_response_still_runs_the_tasks(
    bgtasks: BackgroundTaskCapture,
) -> None:
    # BaseHTTPMiddleware runs the inner response, tasks included, whatever it sends instead.
    class Rebuild(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Response:
            response = await call_next(request)
            body = b"".join([chunk async for chunk in response.body_iterator])
            return Response(body, response.status_code)

    app = apps.fastapi_app((sync_job, ("kept",)))
    app.add_middleware(Rebuild)
    with TestClient(app) as client:
        assert client.post("/work").status_code == 200

    assert bgtasks.assert_task_ran(sync_job).request == TaskRequest("POST", "/work")
    assert apps.ran == [("sync_job", "kept")]


def adding_on_exit(func: Callable[[str], object], value: str) -> FastAPI:
    """An app whose `POST /work` adds `func(value)`, and whose dependency with yield adds
    `sync_job("added on exit")` in its exit code."""
    app = FastAPI()

    def session(background_tasks: BackgroundTasks) -> Iterator[None]:
        yield
        background_tasks.add_task(sync_job, "added on exit")

    @app.post("/work", dependencies=[Depends(session)])
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(func, value)
        return {}

    return app


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_task_added_in_the_exit_of_a_yield_dependency(bgtasks: BackgroundTaskCapture) -> None:
    with TestClient(adding_on_exit(sync_job, "from the endpoint")) as client:
        client.post("/work")

    endpoint, on_exit = bgtasks.tasks
    assert endpoint.status is TaskStatus.RAN
    if (0, 106) <= FASTAPI < (0, 118):
        # The exit code runs before the response is sent: its task joins the batch in time.
        assert on_exit.status is TaskStatus.RAN
        assert apps.ran == [("sync_job", "from the endpoint"), ("sync_job", "added on exit")]
    else:
        # Before 0.106 and from 0.118 the exit code runs after the response ran its tasks.
        assert on_exit.status is TaskStatus.DROPPED
        assert on_exit.reason == (
            "never run: it was added to its BackgroundTasks after the response had run them "
            "(in the exit code of a dependency with yield?)"
        )
        assert apps.ran == [("sync_job", "from the endpoint")]


def test_a_function_scoped_yield_dependency_exits_before_the_response(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    def session(background_tasks: BackgroundTasks) -> Iterator[None]:
        yield
        background_tasks.add_task(sync_job, "added on exit")

    if FASTAPI < (0, 121):  # Depends(scope=...) is new in FastAPI 0.121
        with pytest.raises(TypeError, match="scope"):
            Depends(session, scope="function")  # type: ignore[call-arg,unused-ignore]
        return

    @app.post("/work", dependencies=[Depends(session, scope="function")])  # type: ignore[call-arg,unused-ignore]
    def work() -> dict[str, str]:
        return {}

    with TestClient(app) as client:
        client.post("/work")
    assert bgtasks.assert_task_ran(sync_job, "added on exit").status is TaskStatus.RAN


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_websocket_endpoint_never_runs_its_tasks(bgtasks: BackgroundTaskCapture) -> None:
    app = FastAPI()

    @app.websocket("/ws")
    async def chat(websocket: WebSocket, background_tasks: BackgroundTasks) -> None:
        await websocket.accept()
        background_tasks.add_task(sync_job, "from a websocket")
        await websocket.send_text("hi")
        await websocket.close()

    with TestClient(app) as client, client.websocket_connect("/ws") as websocket:
        assert websocket.receive_text() == "hi"

    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.DROPPED
    assert record.request == TaskRequest("WEBSOCKET", "/ws")
    assert record.reason == "never run: a WebSocket endpoint never runs background tasks"
    assert bgtasks.findings() != []
    assert apps.ran == []


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_response_reused_across_requests_replays_its_tasks(
    bgtasks: BackgroundTaskCapture,
) -> None:
    cached = JSONResponse({}, background=BackgroundTask(sync_job, "cached"))  # site:cached
    app = FastAPI()

    @app.post("/work")
    def work() -> JSONResponse:
        return cached  # built once, at import time in a real app

    with TestClient(app) as client:
        client.post("/work")
        client.post("/work")
        client.post("/work")

    first, again, third = bgtasks.tasks
    assert first.problem is None
    assert again.problem == (
        "this BackgroundTask object already ran as #0 (sync_job('cached') [ran]): "
        "a response object reused across requests runs its tasks again"
    )
    assert third.problem is not None
    assert third.problem.startswith("this BackgroundTask object already ran as #1 ")
    assert again.request == TaskRequest("POST", "/work")
    assert third.added_at == again.added_at == first.added_at == apps.site("cached", __file__)
    assert apps.ran == [("sync_job", "cached")] * 3
    assert [finding.message for finding in bgtasks.findings()] == [
        "2 background tasks ran again: the same BackgroundTask object had already run, so a "
        "response object is reused across requests and replays its tasks.\n"
        f"- sync_job('cached') [ran] POST /work  ({first.added_at})\n"
        f"    {again.problem}\n"
        f"- sync_job('cached') [ran] POST /work  ({first.added_at})\n"
        f"    {third.problem}\n"
        "Build the response (and its background) inside the endpoint; if this is expected, "
        'use @pytest.mark.bgtasks(on_dropped="warn") or "ignore".\n'
        "See https://pytest-bgtasks.github.io/pytest-bgtasks/catches/#ran-again"
    ]


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_task_added_late_to_the_batch_of_a_reused_response(
    bgtasks: BackgroundTaskCapture,
) -> None:
    batch = StarletteBackgroundTasks()
    batch.add_task(sync_job, "cached")
    cached = JSONResponse({}, background=batch)

    def session() -> Iterator[None]:
        yield
        batch.add_task(sync_job, "late")

    app = FastAPI()

    @app.post("/work", dependencies=[Depends(session)])
    def work() -> JSONResponse:
        return cached

    with TestClient(app) as client:
        client.post("/work")
        client.post("/work")

    late = bgtasks.tasks[-1]
    assert late.call == "sync_job('late')"
    if (0, 106) <= FASTAPI < (0, 118):  # the exit code runs before the response: in time
        assert late.status is TaskStatus.RAN
    else:
        # The second response ran the batch again (as a record of its own), then its exit
        # code added to that batch.
        assert late.reason == (
            "never run: it was added to its BackgroundTasks after the response had run them "
            "(in the exit code of a dependency with yield?)"
        )


def shared_batch_app(shared: StarletteBackgroundTasks) -> Starlette:
    """`GET /add` adds to a batch that outlives requests and sends nothing; `GET /send` returns a
    response that runs it."""

    async def add(request: Request) -> Response:
        shared.add_task(sync_job, "shared")
        return PlainTextResponse("added")

    async def send(request: Request) -> Response:
        return PlainTextResponse("sent", background=shared)

    return Starlette(routes=[Route("/add", add), Route("/send", send)])


def test_a_task_dropped_by_one_response_and_run_by_a_later_one_ran(
    bgtasks: BackgroundTaskCapture,
) -> None:
    shared = StarletteBackgroundTasks()
    seen_while_running: list[TaskStatus] = []
    bgtasks.replace(sync_job, lambda value: seen_while_running.append(record.status))
    with TestClient(shared_batch_app(shared)) as client:
        client.get("/add")
        (record,) = bgtasks.tasks
        assert record.status is TaskStatus.DROPPED
        assert bgtasks.findings() != []  # dropped, for now
        client.get("/send")

    assert seen_while_running == [TaskStatus.PENDING]
    assert (record.status, record.reason) == (TaskStatus.RAN, None)
    assert record.request == TaskRequest("GET", "/add")
    assert bgtasks.findings() == []


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_dropped_task_that_fails_in_a_later_request_s_batch_stops_that_batch(
    bgtasks: BackgroundTaskCapture,
) -> None:
    kept: list[BackgroundTask] = []

    async def drop(request: Request) -> Response:
        batch = StarletteBackgroundTasks()
        batch.add_task(boom, "kept")
        kept.extend(batch.tasks)  # a cache, say: the response never carries the batch
        return PlainTextResponse("dropped")

    async def send(request: Request) -> Response:
        batch = StarletteBackgroundTasks(tasks=kept)
        batch.add_task(sync_job, "after")
        return PlainTextResponse("sent", background=batch)

    with TestClient(Starlette(routes=[Route("/drop", drop), Route("/send", send)])) as client:
        client.get("/drop")
        with pytest.raises(ZeroDivisionError):
            client.get("/send")

    failed, after = bgtasks.tasks
    assert (failed.status, failed.request) == (TaskStatus.FAILED, TaskRequest("GET", "/drop"))
    assert (after.status, after.reason) == (
        TaskStatus.NOT_RUN,
        "not run: an earlier task of its response failed, boom('kept') raised "
        "ZeroDivisionError('boom kept')",
    )
    assert apps.ran == []
    assert bgtasks.findings() == []  # the test saw the error: it went up through /send


@pytest.mark.bgtasks(on_dropped="ignore")  # the failed task ran again: reported apart
@pytest.mark.parametrize("mode", ["run", "defer"])
@pytest.mark.parametrize("failure", ["real", "simulated"])
def test_a_task_stopped_by_a_failure_runs_when_its_batch_runs_again(
    bgtasks: BackgroundTaskCapture, failure: str, mode: Any
) -> None:
    bgtasks.mode = mode
    failures = [ZeroDivisionError("once")] if failure == "real" else []

    def flaky() -> None:
        if failures:
            raise failures.pop()

    if failure == "simulated":
        bgtasks.fail(flaky, times=1)
        if mode == "defer":
            bgtasks.defer(flaky)  # the rule added last wins: held, it fails in run_deferred()
    shared = StarletteBackgroundTasks()
    shared.add_task(flaky)
    shared.add_task(sync_job, "after")

    async def send(request: Request) -> Response:
        return PlainTextResponse("sent", background=shared)

    def send_and_run(client: TestClient) -> None:
        client.get("/send")
        if mode == "defer":
            bgtasks.run_deferred()

    with TestClient(Starlette(routes=[Route("/send", send)])) as client:
        if failure == "real":
            with pytest.raises(ZeroDivisionError):
                send_and_run(client)
        else:
            send_and_run(client)
        first, after = bgtasks.tasks
        assert (first.status, after.status) == (TaskStatus.FAILED, TaskStatus.NOT_RUN)
        send_and_run(client)

    first, after, again = bgtasks.tasks
    assert first.status is TaskStatus.FAILED
    assert (after.status, after.reason, after.problem) == (TaskStatus.RAN, None, None)
    assert (again.func, again.status) == (flaky, TaskStatus.RAN)
    assert again.problem == (
        "this BackgroundTask object already ran as #0 (flaky() [failed]): "
        "a response object reused across requests runs its tasks again"
    )
    assert apps.ran == [("sync_job", "after")]


def test_an_http_exception_after_add_task_drops_without_complaint(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/users/{user_id}")
    def update(user_id: int, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "audit")
        raise HTTPException(404, "no such user")

    with TestClient(app) as client:
        assert client.post("/users/7").status_code == 404

    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.DROPPED
    assert record.reason == (
        "never run: the endpoint raised HTTPException(status_code=404, detail='no such user'), "
        "answered with 404"
    )
    assert bgtasks.findings() == []


def test_a_returned_error_response_still_runs_its_tasks(bgtasks: BackgroundTaskCapture) -> None:
    app = FastAPI()

    @app.post("/users/{user_id}")
    def update(user_id: int, background_tasks: BackgroundTasks) -> JSONResponse:
        background_tasks.add_task(sync_job, "audit")
        return JSONResponse({"detail": "no such user"}, status_code=404)

    with TestClient(app) as client:
        assert client.post("/users/7").status_code == 404

    assert bgtasks.tasks[0].status is TaskStatus.RAN
    assert apps.ran == [("sync_job", "audit")]


@pytest.mark.parametrize("status", [400, 404])
def test_an_error_answered_by_a_status_handler_drops_without_complaint(
    bgtasks: BackgroundTaskCapture, status: int
) -> None:
    app = FastAPI()

    @app.exception_handler(status)
    async def answer(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("gone", status_code=status)

    @app.post("/users/{user_id}")
    def update(user_id: int, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "audit")
        raise HTTPException(status)

    with TestClient(app) as client:
        assert client.post("/users/7").text == "gone"

    (record,) = bgtasks.dropped
    assert record.reason == f"never run: the request ended with a {status} response"
    assert bgtasks.findings() == []
    with pytest.raises(
        AssertionError,
        match=rf"\nThe matching task #0 was dropped: the request ended with a {status} response\.\n",
    ):
        bgtasks.assert_task_ran(sync_job)


class Muffle:
    """A pure ASGI middleware that keeps whatever the app sends, swallows what it raises, and
    answers with `status` itself (or not at all)."""

    def __init__(self, app: Any, status: int | None) -> None:
        self.app = app
        self.status = status

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def kept(message: Any) -> None:
            pass

        with contextlib.suppress(Exception):
            await self.app(scope, receive, kept)
        if self.status is not None:
            await send({"type": "http.response.start", "status": self.status, "headers": []})
            await send({"type": "http.response.body", "body": b""})


@pytest.mark.bgtasks(on_dropped="ignore")
@pytest.mark.parametrize(
    ("status", "path", "reason"),
    [
        (None, "/error", "never run: the endpoint raised LookupError('database gone')"),
        (
            None,
            "/missing",
            "never run: the endpoint raised HTTPException(status_code=404, detail='no such user')",
        ),
        (
            400,
            "/error",
            "never run: the endpoint raised LookupError('database gone'), answered with 400",
        ),
    ],
    ids=["no-answer", "handled-no-answer", "answered-400"],
)
def test_a_middleware_that_answers_for_the_app(
    bgtasks: BackgroundTaskCapture, status: int | None, path: str, reason: str
) -> None:
    """The endpoint raised after add_task: whatever the middleware makes of it, the drop is the
    framework working as designed."""
    app = FastAPI()
    app.add_middleware(Muffle, status=status)

    @app.post("/error")
    def error(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "audit")
        raise LookupError("database gone")

    @app.post("/missing")
    def missing(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "audit")
        raise HTTPException(404, "no such user")

    with TestClient(app) as client:
        if status is None:
            with pytest.raises(AssertionError, match="did not receive any response"):
                client.post(path)
        else:
            assert client.post(path).status_code == status

    (record,) = bgtasks.dropped
    assert record.reason == reason
    assert bgtasks.findings() == []


def test_an_unhandled_error_after_add_task_drops_without_complaint(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "audit")
        raise LookupError("database gone")

    with TestClient(app) as client, pytest.raises(LookupError):
        client.post("/work")

    (record,) = bgtasks.dropped
    assert record.reason == "never run: the request raised LookupError('database gone')"
    assert bgtasks.findings() == []


# -- failures --------------------------------------------------------------------------------


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
@pytest.mark.parametrize("middleware", [False, True], ids=["plain", "BaseHTTPMiddleware"])
def test_the_first_of_three_tasks_fails(bgtasks: BackgroundTaskCapture, middleware: bool) -> None:
    class Passthrough(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            return response

    app = apps.fastapi_app((boom, ("first",)), (sync_job, ("second",)), (sync_job, ("third",)))
    if middleware:
        app.add_middleware(Passthrough)
    swallowed = middleware and (0, 29) <= STARLETTE < (0, 46)

    with TestClient(app) as client:
        if swallowed:
            # Starlette 0.29 to 0.45: BaseHTTPMiddleware stops reading at the end of the body
            # and drops an exception the app raises after it: the client sees a 200.
            assert client.post("/work").status_code == 200
        else:
            with pytest.raises(Exception) as raised:  # noqa: PT011
                client.post("/work")
            assert _contains(raised.value, ZeroDivisionError)

    first, second, third = bgtasks.tasks
    assert first.status is TaskStatus.FAILED
    assert (second.status, third.status) == (TaskStatus.NOT_RUN, TaskStatus.NOT_RUN)
    assert apps.ran == []
    errors = [finding.message for finding in bgtasks.findings()]
    if swallowed:
        (message,) = errors
        assert "- boom('first') [failed] POST /work" in message
    else:
        assert errors == []


MADE_BEFORE = BackgroundTask(sync_job, "made before the capture")
FAILING_MADE_BEFORE = BackgroundTask(boom, "first")


@pytest.mark.bgtasks(on_dropped="ignore")  # the batch beside the one sent is dropped
@pytest.mark.parametrize(
    "how",
    [
        "batch-from-a-list",
        "batch-beside-another",
        "alone",
        "alone-made-before-the-capture",
        "moved-out-of-its-batch",
    ],
)
def test_a_failing_task_stops_the_rest_of_its_response(
    bgtasks: BackgroundTaskCapture, how: str
) -> None:
    async def work(request: Request) -> Response:
        if how == "batch-beside-another":  # the batch made last is not the one that failed
            sent = StarletteBackgroundTasks()
            sent.add_task(boom, "first")
            sent.add_task(sync_job, "third")
            StarletteBackgroundTasks().add_task(sync_job, "never sent")
            return PlainTextResponse("ok", background=sent)
        if how == "batch-from-a-list":  # a task made before the capture in between
            made = [BackgroundTask(boom, "first"), MADE_BEFORE, BackgroundTask(sync_job, "third")]
            return PlainTextResponse("ok", background=StarletteBackgroundTasks(made))
        if how == "alone":
            return PlainTextResponse("ok", background=BackgroundTask(boom, "first"))
        if how == "alone-made-before-the-capture":
            return PlainTextResponse("ok", background=FAILING_MADE_BEFORE)
        batch = StarletteBackgroundTasks()
        batch.add_task(boom, "first")
        return PlainTextResponse("ok", background=batch.tasks.pop())

    with (
        TestClient(Starlette(routes=[Route("/work", work)])) as client,
        pytest.raises(ZeroDivisionError),
    ):
        client.get("/work")

    failed, *rest = bgtasks.tasks
    assert failed.status is TaskStatus.FAILED
    if how == "batch-beside-another":
        third, never_sent = rest
        assert never_sent.status is TaskStatus.DROPPED
        rest = [third]
    if how in ("batch-from-a-list", "batch-beside-another"):
        (third,) = rest
        assert third.status is TaskStatus.NOT_RUN
        assert third.reason == (
            "not run: an earlier task of its response failed, boom('first') raised "
            "ZeroDivisionError('boom first')"
        )
    else:
        assert rest == []
    assert apps.ran == []


@pytest.mark.bgtasks(mode="defer", on_dropped="ignore")
def test_a_held_task_that_fails_leaves_a_task_dropped_from_its_batch_as_it_was(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with TestClient(adding_on_exit(boom, "held")) as client:
        client.post("/work")
    with pytest.raises(ZeroDivisionError):
        bgtasks.run_deferred()

    held, on_exit = bgtasks.tasks
    assert held.status is TaskStatus.FAILED
    if (0, 106) <= FASTAPI < (0, 118):  # it joined the batch in time, and was held too
        assert on_exit.status is TaskStatus.NOT_RUN
    else:
        assert on_exit.status is TaskStatus.DROPPED
        assert on_exit.reason is not None
        assert on_exit.reason.startswith("never run: it was added to its BackgroundTasks after")


def _contains(exc: BaseException, kind: type[BaseException]) -> bool:
    """`exc` is a `kind`, or an exception group holding one (anyio 4 task groups)."""
    if isinstance(exc, kind):
        return True
    return any(_contains(inner, kind) for inner in getattr(exc, "exceptions", ()))


def test_an_http_exception_raised_in_a_task_keeps_the_original(
    bgtasks: BackgroundTaskCapture,
) -> None:
    def forbidden() -> None:
        raise HTTPException(403, "too late")

    app = apps.fastapi_app((forbidden, ()))
    with TestClient(app) as client, pytest.raises(RuntimeError) as error:
        client.post("/work")

    # What the client sees: Starlette can no longer answer with the exception's response.
    assert str(error.value) == "Caught handled exception, but response already started."
    record = bgtasks.assert_task_failed(forbidden)
    assert isinstance(record.exception, HTTPException)
    assert error.value.__cause__ is record.exception
    assert bgtasks.findings() == []  # the test saw it, inside the RuntimeError


async def async_boom(value: str) -> None:
    raise ZeroDivisionError(value)


GENERATED: dict[str, Any] = {}  # code made by exec() has no module name
exec("def generated(value):\n    raise ZeroDivisionError(value)\n", GENERATED)


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
@pytest.mark.parametrize("kind", ["def", "async-def", "exec"])
def test_a_task_exception_the_client_hid_is_reported(
    bgtasks: BackgroundTaskCapture, kind: str
) -> None:
    func = {"def": boom, "async-def": async_boom, "exec": GENERATED["generated"]}[kind]
    with TestClient(apps.fastapi_app((func, ("hidden",))), raise_server_exceptions=False) as client:
        assert client.post("/work").status_code == 200

    # The traceback starts in the task's own code.
    if kind == "exec":
        frames = ['      File "<string>", line 2, in generated']
    else:  # the raise on the line after the def
        code = func.__code__
        path, line = os.path.relpath(code.co_filename), code.co_firstlineno + 1
        frames = [
            f'      File "{path}", line {line}, in {func.__name__}',
            f"        {linecache.getline(code.co_filename, line).strip()}",
        ]
    shown = "hidden" if kind != "def" else "boom hidden"
    assert [finding.message for finding in bgtasks.findings()] == [
        "\n".join(
            [
                "1 background task raised and the test never saw the exception (the client "
                "or a middleware hid it):",
                f"- {func.__name__}('hidden') [failed] POST /work  ({apps.site('fastapi')})",
                f"    raised: ZeroDivisionError('{shown}')",
                "    Traceback (most recent call last):",
                *frames,
                f"    ZeroDivisionError: {shown}",
                "If the test expects this, assert it with bgtasks.assert_task_failed(...) "
                "and use @pytest.mark.bgtasks(allow_failures=True).",
                "See https://pytest-bgtasks.github.io/pytest-bgtasks/catches/#hidden-failure",
            ]
        )
    ]
    assert [finding.kind for finding in bgtasks.findings()] == ["hidden_failure"]


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_task_that_fails_outside_any_request_where_nobody_looks(
    bgtasks: BackgroundTaskCapture,
) -> None:
    task = BackgroundTask(boom, "in a pool")  # site:pool
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        failure = pool.submit(anyio.run, task).exception()  # kept, never raised
    assert isinstance(failure, ZeroDivisionError)

    (message,) = [finding.message for finding in bgtasks.findings()]
    assert message.startswith(
        "1 background task raised and the test never saw the exception (the client or a "
        f"middleware hid it):\n- boom('in a pool') [failed]  ({apps.site('pool', __file__)})\n"
    )


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_task_exception_a_middleware_replaced_is_reported(
    bgtasks: BackgroundTaskCapture,
) -> None:
    class Replace:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            failed = False
            try:
                await self.app(scope, receive, send)
            except ZeroDivisionError:
                failed = True
            if failed:  # raised afresh: nothing leads from it to the task's exception
                raise RuntimeError("a task failed")

    app = apps.fastapi_app((boom, ("replaced",)))
    app.add_middleware(Replace)
    with TestClient(app) as client, pytest.raises(RuntimeError, match="a task failed"):
        client.post("/work")

    (message,) = [finding.message for finding in bgtasks.findings()]
    assert "\n- boom('replaced') [failed] POST /work" in message


class Regroup:
    """A pure ASGI middleware that raises, in place of what the app raised, what `make` builds
    from it."""

    def __init__(self, app: Any, make: Callable[[BaseException], BaseException]) -> None:
        self.app = app
        self.make = make

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        failed: BaseException | None = None
        try:
            await self.app(scope, receive, send)
        except ZeroDivisionError as exc:
            failed = exc
        if failed is not None:  # raised afresh: its context is only what `make` gives it
            raise self.make(failed)


def _reached_twice(exc: BaseException) -> BaseException:
    """A group that reaches one exception twice, and `exc` only past it."""
    shared, via = KeyError("shared"), ValueError("via")
    via.__context__ = exc
    outer = ExceptionGroup("outer", [shared])
    outer.__cause__, outer.__context__ = via, shared
    return outer


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the findings itself
@pytest.mark.parametrize(
    ("make", "seen"),
    [
        (lambda exc: ExceptionGroup("group", [KeyError("other"), exc]), True),
        (_reached_twice, True),
        (lambda exc: RuntimeError("a task failed"), False),
    ],
    ids=["in-a-group", "past-an-exception-reached-twice", "unrelated"],
)
def test_what_left_the_app_is_searched_for_the_tasks_exception(
    bgtasks: BackgroundTaskCapture, make: Callable[[BaseException], BaseException], seen: bool
) -> None:
    app = apps.fastapi_app((boom, ("regrouped",)))
    app.add_middleware(Regroup, make=make)
    with TestClient(app) as client, pytest.raises(Exception):  # noqa: PT011, B017
        client.post("/work")
    assert [finding.kind for finding in bgtasks.findings()] == ([] if seen else ["hidden_failure"])


class Swallow:
    """A pure ASGI middleware with "best effort" error handling that hides a task's failure."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with contextlib.suppress(ZeroDivisionError):
            await self.app(scope, receive, send)


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_task_exception_a_middleware_swallowed_is_reported(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = apps.fastapi_app((boom, ("swallowed",)))
    app.add_middleware(Swallow)
    with TestClient(app) as client:
        assert client.post("/work").status_code == 200

    (message,) = [finding.message for finding in bgtasks.findings()]
    assert "\n- boom('swallowed') [failed] POST /work" in message
    # The traceback starts in the task, not in the middleware that caught the exception.
    code = boom.__code__
    first = message.split("Traceback (most recent call last):\n")[1].splitlines()[0]
    assert first == (
        f'      File "{os.path.relpath(code.co_filename)}", line {code.co_firstlineno + 1}, in boom'
    )


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_an_error_whose_chain_loops_is_searched_once_for_the_tasks(
    bgtasks: BackgroundTaskCapture,
) -> None:
    class Replace(Swallow):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await super().__call__(scope, receive, send)
            if scope["type"] == "http":
                first, second = RuntimeError("first"), RuntimeError("second")
                first.__cause__, second.__cause__ = second, first  # a chain that loops
                raise first

    app = apps.fastapi_app((boom, ("replaced",)))
    app.add_middleware(Replace)
    with TestClient(app) as client, pytest.raises(RuntimeError, match=r"^first$"):
        client.post("/work")
    # What reached the test does not hold the task's exception.
    assert [finding.kind for finding in bgtasks.findings()] == ["hidden_failure"]


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_non_callable_given_to_add_task_is_reported_at_its_call_site(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(42)  # type: ignore[arg-type]  # the misuse under test
        return {}

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/work").status_code == 200

    (record,) = bgtasks.tasks
    assert record.call == "42()"
    assert record.problem == "add_task() was given 42, which is not callable"
    assert isinstance(record.exception, TypeError)
    (message,) = [finding.message for finding in bgtasks.findings()]
    assert "    add_task() was given 42, which is not callable\n" in message
    # Raised by Starlette itself, so the whole traceback is shown.
    assert "starlette" in message.split("Traceback")[1]
    shown = message.split("Traceback (most recent call last):\n")[1].count('      File "')
    assert shown == len(traceback.extract_tb(record.exception.__traceback__))


# -- streaming and cancellation ----------------------------------------------------------------


def test_tasks_of_a_streaming_response_run_after_the_body(bgtasks: BackgroundTaskCapture) -> None:
    app = FastAPI()

    @app.get("/stream")
    def stream(background_tasks: BackgroundTasks) -> StreamingResponse:
        background_tasks.add_task(sync_job, "after the body")

        def body() -> Iterator[bytes]:
            yield b"one "
            yield b"two"

        return StreamingResponse(body())

    with TestClient(app) as client:
        assert client.get("/stream").text == "one two"
    assert bgtasks.assert_task_ran(sync_job).request == TaskRequest("GET", "/stream")


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_streaming_body_that_raises_drops_its_tasks(bgtasks: BackgroundTaskCapture) -> None:
    app = FastAPI()

    @app.get("/stream")
    def stream(background_tasks: BackgroundTasks) -> StreamingResponse:
        background_tasks.add_task(sync_job, "never")

        async def body() -> AsyncIterator[bytes]:
            yield b"partial"
            raise ConnectionResetError("upstream went away")

        return StreamingResponse(body())

    with TestClient(app) as client, pytest.raises(Exception) as raised:  # noqa: PT011
        client.get("/stream")

    error = "ConnectionResetError('upstream went away')"
    if ANYIO >= (4, 0) and STARLETTE < (0, 46):
        # Before 0.46 Starlette streams the body in an anyio task group and lets its errors
        # out as they come; anyio 4 wraps them in an ExceptionGroup.
        assert type(raised.value).__name__ == "ExceptionGroup"
        error = f"ExceptionGroup('unhandled errors in a TaskGroup', [{error}])"
    assert _contains(raised.value, ConnectionResetError)
    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.DROPPED
    assert record.reason == f"never run: the request raised {error}"
    assert bgtasks.findings() == []


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_stream_closed_early_by_the_client(bgtasks: BackgroundTaskCapture) -> None:
    app = FastAPI()

    @app.get("/stream")
    def stream(background_tasks: BackgroundTasks) -> StreamingResponse:
        background_tasks.add_task(sync_job, "after the body")

        async def body() -> AsyncIterator[bytes]:
            for _ in range(50):
                yield b"x" * 1024
                await anyio.sleep(0.01)

        return StreamingResponse(body())

    with TestClient(app) as client, client.stream("GET", "/stream") as response:
        next(response.iter_bytes())

    (record,) = bgtasks.tasks
    if STARLETTE >= (1, 9):
        # TestClient streams: closing early cancels the app before its tasks start.
        assert record.status is TaskStatus.CANCELLED
        assert record.reason == "never started: its request was cancelled"
        assert apps.ran == []
    else:
        # TestClient reads the whole response first: the tasks ran before stream() returned.
        assert record.status is TaskStatus.RAN
        assert apps.ran == [("sync_job", "after the body")]


def test_tasks_of_a_file_response(bgtasks: BackgroundTaskCapture, tmp_path: Any) -> None:
    report = tmp_path / "report.csv"
    report.write_text("id,total\n1,10\n")
    app = FastAPI()

    @app.get("/report")
    def download(background_tasks: BackgroundTasks) -> FileResponse:
        background_tasks.add_task(sync_job, "delete report")
        return FileResponse(report)

    with TestClient(app) as client:
        assert client.get("/report").text == "id,total\n1,10\n"
    assert bgtasks.assert_task_ran(sync_job, "delete report").request == TaskRequest(
        "GET", "/report"
    )


async def cancel_while_its_first_task_runs() -> Callable[[], Awaitable[None]]:
    """POST to an app of two tasks, `slow()` then `sync_job("after")`, and cancel the request
    while `slow()` runs (it waits forever); return `slow`."""
    started = anyio.Event()

    async def slow() -> None:
        started.set()
        await anyio.sleep_forever()

    app = apps.fastapi_app((slow, ()), (sync_job, ("after",)))
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(client.post, "/work")
        await started.wait()
        group.cancel_scope.cancel()
    return slow


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_request_cancelled_while_its_task_runs(bgtasks: BackgroundTaskCapture) -> None:
    await cancel_while_its_first_task_runs()

    running, after = bgtasks.tasks
    assert (running.status, running.reason) == (TaskStatus.CANCELLED, "cancelled while running")
    assert (after.status, after.reason) == (
        TaskStatus.CANCELLED,
        "never started: an earlier task was cancelled",
    )
    assert bgtasks.findings() == []
    assert apps.ran == []


@pytest.mark.anyio
async def test_an_assertion_says_in_a_sentence_how_a_task_was_cancelled(
    bgtasks: BackgroundTaskCapture,
) -> None:
    slow = await cancel_while_its_first_task_runs()

    added = (
        "2 background tasks were added:\n"
        f"- slow() [cancelled] POST /work  ({apps.site('fastapi')})\n"
        "    cancelled while running\n"
        f"- sync_job('after') [cancelled] POST /work  ({apps.site('fastapi')})\n"
        "    never started: an earlier task was cancelled\n"
    )
    see = "See https://pytest-bgtasks.github.io/pytest-bgtasks/assertions/#matching"
    with pytest.raises(AssertionError) as running:
        bgtasks.assert_task_ran(slow)
    assert str(running.value) == (
        f"No background task matching slow(...) ran.\n{added}"
        f"The matching task #0 was cancelled while running.\n{see}"
    )
    with pytest.raises(AssertionError) as after:
        bgtasks.assert_task_ran(sync_job, "after")
    assert str(after.value) == (
        f"No background task matching sync_job('after') ran.\n{added}"
        f"The matching task #1 was cancelled: an earlier task was cancelled.\n{see}"
    )


# -- tasks created outside the capture ---------------------------------------------------------


CREATED_BEFORE = BackgroundTask(sync_job, "created at import")


def test_a_task_created_before_the_capture_is_recorded_when_it_runs(
    bgtasks: BackgroundTaskCapture,
) -> None:
    async def work(request: Request) -> Response:
        return PlainTextResponse("ok", background=StarletteBackgroundTasks([CREATED_BEFORE]))

    with TestClient(Starlette(routes=[Route("/work", work)])) as client:
        client.get("/work")

    (record,) = bgtasks.tasks
    assert record.added_at is None  # created before anything was watching
    assert record.request == TaskRequest("GET", "/work")
    assert record.status is TaskStatus.RAN


class Where(BackgroundTask):
    """A task class that notes the line its caller's frame shows."""

    shown: ClassVar[list[int]] = []

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        frame = sys._getframe(1)
        self.shown.append(frame.f_lineno)
        super().__init__(func, *args)


def test_a_call_site_is_the_line_a_frame_shows(bgtasks: BackgroundTaskCapture) -> None:
    Where.shown.clear()
    for value in ("a", "b"):
        Where(sync_job, value)
        Where(
            sync_job,
            value,
        )
    lines = [record.call_site.line for record in bgtasks.tasks if record.call_site is not None]
    assert lines == Where.shown
    assert len(set(lines)) == 2


def test_a_task_made_with_no_app_code_on_the_stack_has_no_call_site(
    bgtasks: BackgroundTaskCapture,
) -> None:
    """A raw thread started on `BackgroundTask` itself: only Starlette's frames and the
    plugin's are on its stack, so there is no line of the app to point at."""
    _thread.start_new_thread(BackgroundTask, (sync_job, "raw"))
    for _ in range(500):
        if bgtasks.tasks:
            break
        time.sleep(0.01)
    [record] = bgtasks.tasks
    assert (record.name, record.args) == ("sync_job", ("raw",))
    assert record.call_site is None
    assert record.added_at is None
    assert str(record) == "sync_job('raw') [pending]"


def test_call_sites_are_relative_to_the_rootdir_wherever_the_test_runs(
    bgtasks: BackgroundTaskCapture,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(tmp_path)
    BackgroundTask(sync_job, "x")
    line = _this_line() - 1
    relative = os.path.relpath(__file__, request.config.rootpath)
    (record,) = bgtasks.tasks
    assert record.added_at == f"{relative}:{line}"
    assert record.call_site == (__file__, line)


def _this_line() -> int:
    import inspect

    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno


# -- trio ----------------------------------------------------------------------------------------


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_runs_on_the_live_trio_loop_of_the_client(
    bgtasks: BackgroundTaskCapture,
) -> None:
    import trio

    tokens: list[object] = []
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        tokens.append(trio.lowlevel.current_trio_token())

        async def where() -> None:
            tokens.append(trio.lowlevel.current_trio_token())

        background_tasks.add_task(where)
        return {}

    with TestClient(app, backend="trio") as client:
        client.post("/work")
        bgtasks.run_deferred()
    assert bgtasks.tasks[0].status is TaskStatus.RAN
    assert tokens[0] is tokens[1]


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_after_the_trio_loop_ended_uses_a_new_loop(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with TestClient(apps.fastapi_app((async_job, ("later",))), backend="trio") as client:
        client.post("/work")
    bgtasks.run_deferred()
    assert apps.ran == [("async_job", "later")]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.bgtasks(mode="defer")
async def test_arun_deferred_in_an_asyncio_test_runs_tasks_on_the_live_trio_loop_of_a_client(
    bgtasks: BackgroundTaskCapture,
) -> None:
    import trio

    tokens: list[object] = []

    async def where() -> None:
        tokens.append(trio.lowlevel.current_trio_token())

    with TestClient(apps.fastapi_app((where, ())), backend="trio") as client:
        client.post("/work")
        assert await bgtasks.arun_deferred() == bgtasks.tasks
        assert client.portal is not None
        assert tokens == [client.portal.call(trio.lowlevel.current_trio_token)]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_run_deferred_inside_a_trio_test_points_to_arun_deferred(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with pytest.raises(RuntimeError, match=r"use `await bgtasks.arun_deferred\(\)`"):
        bgtasks.run_deferred()
    assert await bgtasks.arun_deferred() == []
