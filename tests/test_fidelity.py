"""Records that tell the truth in the situations production hides: dropped tasks, failures
nobody sees, cancelled responses, misuse. Each test pins the record and the app's behaviour."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import anyio
import fastapi
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

    dropped, own = bgtasks.tasks
    assert dropped.status is TaskStatus.DROPPED
    assert dropped.reason == (
        "never run: the response carried async_job('own') instead; an endpoint that returns a "
        "response with its own `background` replaces the injected BackgroundTasks"
    )
    assert own.status is TaskStatus.RAN
    assert apps.ran == [("async_job", "own")]
    errors, warnings = bgtasks._verdict(on_dropped="fail")
    assert warnings == []
    assert errors[0].startswith("1 background task was added but never run")


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
    assert bgtasks._verdict()[0] != []
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
    assert bgtasks._verdict()[0] != []
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


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_task_added_in_the_exit_of_a_yield_dependency(bgtasks: BackgroundTaskCapture) -> None:
    app = FastAPI()

    def session(background_tasks: BackgroundTasks) -> Iterator[None]:
        yield
        background_tasks.add_task(sync_job, "added on exit")

    @app.post("/work", dependencies=[Depends(session)])
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "from the endpoint")
        return {}

    with TestClient(app) as client:
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
    assert bgtasks._verdict()[0] != []
    assert apps.ran == []


@pytest.mark.bgtasks(on_dropped="ignore")
def test_a_response_reused_across_requests_replays_its_tasks(
    bgtasks: BackgroundTaskCapture,
) -> None:
    cached = JSONResponse({}, background=BackgroundTask(sync_job, "cached"))
    app = FastAPI()

    @app.post("/work")
    def work() -> JSONResponse:
        return cached  # built once, at import time in a real app

    with TestClient(app) as client:
        client.post("/work")
        client.post("/work")

    first, again = bgtasks.tasks
    assert first.problem is None
    assert again.problem == (
        "this BackgroundTask object already ran as #0 (sync_job('cached') [ran]): "
        "a response object reused across requests runs its tasks again"
    )
    assert again.request == TaskRequest("POST", "/work")
    assert apps.ran == [("sync_job", "cached")] * 2
    (message,) = bgtasks._verdict()[0]
    assert message.startswith(
        "1 background task ran again: the same BackgroundTask object had already run, so a "
        "response object is reused across requests and replays its tasks.\n"
        "- sync_job('cached') [ran] POST /work"
    )


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
    assert bgtasks._verdict() == ([], [])


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


def test_an_error_answered_by_a_status_handler_drops_without_complaint(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("gone", status_code=404)

    @app.post("/users/{user_id}")
    def update(user_id: int, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "audit")
        raise HTTPException(404)

    with TestClient(app) as client:
        assert client.post("/users/7").text == "gone"

    (record,) = bgtasks.dropped
    assert record.reason == "never run: the request ended with a 404 response"
    assert bgtasks._verdict() == ([], [])


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
    assert bgtasks._verdict() == ([], [])


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
    errors, _ = bgtasks._verdict()
    if swallowed:
        (message,) = errors
        assert "- boom('first') [failed] POST /work" in message
    else:
        assert errors == []


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
    assert bgtasks._verdict() == ([], [])  # the test saw it, inside the RuntimeError


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_task_exception_the_client_hid_is_reported(bgtasks: BackgroundTaskCapture) -> None:
    with TestClient(apps.fastapi_app((boom, ("hidden",))), raise_server_exceptions=False) as client:
        assert client.post("/work").status_code == 200

    errors, _ = bgtasks._verdict()
    (message,) = errors
    assert message.startswith(
        "1 background task raised and the test never saw the exception (the client or a "
        "middleware hid it):\n- boom('hidden') [failed] POST /work"
    )
    # The traceback starts in the task's own code.
    assert "\n    Traceback (most recent call last):\n      File " in message
    assert (
        message.split("Traceback (most recent call last):\n")[1]
        .splitlines()[0]
        .endswith(", in boom")
    )
    assert bgtasks._verdict(allow_failures=True) == ([], [])


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_task_exception_a_middleware_swallowed_is_reported(
    bgtasks: BackgroundTaskCapture,
) -> None:
    class Swallow:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            # "Best effort" error handling that hides the task's failure.
            with contextlib.suppress(ZeroDivisionError):
                await self.app(scope, receive, send)

    app = apps.fastapi_app((boom, ("swallowed",)))
    app.add_middleware(Swallow)
    with TestClient(app) as client:
        assert client.post("/work").status_code == 200

    (message,) = bgtasks._verdict()[0]
    assert "\n- boom('swallowed') [failed] POST /work" in message


@pytest.mark.bgtasks(allow_failures=True)  # this test checks the verdict itself
def test_a_non_callable_given_to_add_task_is_reported_at_its_call_site(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(42)  # type: ignore[arg-type]
        return {}

    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/work").status_code == 200

    (record,) = bgtasks.tasks
    assert record.call == "42()"
    assert record.problem == "add_task() was given 42, which is not callable"
    assert isinstance(record.exception, TypeError)
    (message,) = bgtasks._verdict()[0]
    assert "    add_task() was given 42, which is not callable\n" in message
    # Raised by Starlette itself, so the whole traceback is shown.
    assert "starlette" in message.split("Traceback")[1]


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
    assert bgtasks._verdict() == ([], [])


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


def test_call_sites_outside_the_working_directory_are_absolute(
    bgtasks: BackgroundTaskCapture, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    BackgroundTask(sync_job, "x")
    assert bgtasks.tasks[0].added_at == f"{__file__}:{_this_line() - 1}"


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
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_run_deferred_inside_a_trio_test_points_to_arun_deferred(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with pytest.raises(RuntimeError, match=r"use `await bgtasks.arun_deferred\(\)`"):
        bgtasks.run_deferred()
    assert await bgtasks.arun_deferred() == []
