"""Situations met on real FastAPI code bases, or found by trying to break the plugin: each test
pins what a user expects the records, the rules and the verdict to say."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest.mock import ANY

import anyio
import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

import apps
from apps import async_job, sync_job
from pytest_bgtasks import BackgroundTaskCapture, TaskRequest, TaskStatus, task

# -- records and verdicts ----------------------------------------------------------------------


@pytest.mark.bgtasks(on_dropped="ignore")  # the test checks the findings itself
def test_an_error_status_is_no_excuse_for_a_task_its_response_did_not_carry(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    def audit_access(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(sync_job, "access")

    @app.post("/work", dependencies=[Depends(audit_access)])
    def work() -> JSONResponse:
        return JSONResponse({}, status_code=400, background=BackgroundTask(async_job, "own"))

    with TestClient(app) as client:
        assert client.post("/work").status_code == 400

    apps.assert_carried_its_own(bgtasks.tasks)
    assert [finding.kind for finding in bgtasks.findings()] == ["dropped"]


class Timed(BackgroundTask):
    """A task class that runs its function itself, and times it, as logging wrappers do."""

    took: list[float] = []  # noqa: RUF012

    def __init__(self, func: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(func, *args, **kwargs)  # site:super-init

    async def __call__(self) -> None:
        start = time.perf_counter()
        if self.is_async:
            await self.func(*self.args, **self.kwargs)
        else:
            await run_in_threadpool(self.func, *self.args, **self.kwargs)
        self.took.append(time.perf_counter() - start)


class Logged(BackgroundTask):
    """A task class that wraps Starlette's own call."""

    async def __call__(self) -> None:
        apps.ran.append(("log", "before"))
        await super().__call__()


@pytest.mark.parametrize("kind", [Timed, Logged], ids=["runs-its-function", "calls-super"])
def test_a_task_subclass_with_its_own_call_is_seen_running(
    bgtasks: BackgroundTaskCapture, kind: type[BackgroundTask]
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work() -> Response:
        return Response(background=kind(sync_job, "timed"))  # site:subclass

    with TestClient(app) as client:
        client.post("/work")

    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.RAN
    assert record.added_at == apps.site("subclass", __file__)
    assert ("sync_job", "timed") in apps.ran
    assert bgtasks.findings() == []


def test_a_task_subclass_with_its_own_call_runs_an_async_function_on_the_task_itself(
    bgtasks: BackgroundTaskCapture,
) -> None:
    made: list[BackgroundTask] = []
    called: list[BackgroundTask] = []

    class Noted(BackgroundTask):
        async def __call__(self) -> None:
            called.append(self)
            await super().__call__()

    app = FastAPI()

    @app.post("/work")
    def work() -> Response:
        made.append(Noted(async_job, "noted"))
        return Response(background=made[0])

    with TestClient(app) as client:
        client.post("/work")

    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.RAN
    assert apps.ran == [("async_job", "noted")]
    assert len(called) == 1
    assert called[0] is made[0]


class Counted(BackgroundTask):
    """A task class whose own `__call__` keeps state on the task, as retrying wrappers do."""

    attempts = 0

    async def __call__(self) -> None:
        self.attempts += 1
        await super().__call__()


@pytest.mark.parametrize("func", [sync_job, async_job, "replaced"])
def test_what_a_task_subclass_s_own_call_sets_on_the_task_stays_on_it(
    bgtasks: BackgroundTaskCapture, func: Any
) -> None:
    faked: list[str] = []
    if func == "replaced":
        func = sync_job
        bgtasks.replace(sync_job, faked.append)
    made: list[Counted] = []
    app = FastAPI()

    @app.post("/work")
    def work() -> Response:
        made.append(Counted(func, "counted"))
        return Response(background=made[-1])

    with TestClient(app) as client:
        client.post("/work")
        client.post("/work")

    assert [task.attempts for task in made] == [1, 1]
    assert all(task.func is func for task in made)  # what the plugin runs in its place is not
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN] * 2
    assert len(apps.ran) + len(faked) == 2


def test_a_task_subclass_that_runs_its_function_obeys_the_rules(
    bgtasks: BackgroundTaskCapture,
) -> None:
    faked: list[str] = []
    bgtasks.replace(sync_job, faked.append)
    bgtasks.fail(task(async_job, "fails"))
    app = FastAPI()

    @app.post("/work")
    def work() -> Response:
        return Response(background=Timed(sync_job, "replaced"))

    @app.post("/fail")
    def fail() -> Response:
        return Response(background=Timed(async_job, "fails"))

    with TestClient(app) as client:
        client.post("/work")
        client.post("/fail")

    replaced, failed = bgtasks.tasks
    assert replaced.status is TaskStatus.RAN
    assert faked == ["replaced"]
    assert failed.status is TaskStatus.FAILED
    assert failed.simulated
    assert apps.ran == []


@pytest.mark.bgtasks(allow_failures=True)  # the test checks the findings itself
def test_a_generator_function_given_as_a_task_is_reported(bgtasks: BackgroundTaskCapture) -> None:
    def export() -> Iterator[str]:
        apps.ran.append(("export", None))
        yield "row"

    async def stream() -> AsyncIterator[str]:
        apps.ran.append(("stream", None))
        yield "row"

    with TestClient(apps.fastapi_app((export, ()), (stream, ()))) as client:
        client.post("/work")

    generator, async_generator = bgtasks.tasks
    assert apps.ran == []  # Starlette called both and never ran their bodies
    assert (generator.status, async_generator.status) == (TaskStatus.FAILED, TaskStatus.FAILED)
    assert generator.problem == (
        "export returned a generator, whose body never runs: Starlette calls a task and drops "
        "what it returns; give add_task a plain function (def or async def)"
    )
    assert async_generator.problem is not None
    assert async_generator.problem.startswith("stream returned an async generator, ")
    (finding,) = bgtasks.findings()
    assert finding.kind == "did_nothing"
    assert finding.records == (generator, async_generator)
    assert f"({apps.site('fastapi')})" in finding.message


@pytest.mark.parametrize("status", [200, 503])
def test_an_endpoint_that_raised_is_no_complaint_when_a_middleware_answers_for_it(
    bgtasks: BackgroundTaskCapture, status: int
) -> None:
    class Recover(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            try:
                return await call_next(request)
            except LookupError:
                return JSONResponse({"detail": "later"}, status_code=status)

    app = FastAPI()
    app.add_middleware(Recover)

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "audit")
        raise LookupError("database gone")

    with TestClient(app) as client:
        assert client.post("/work").status_code == status

    (record,) = bgtasks.dropped
    assert record.reason == (
        f"never run: the endpoint raised LookupError('database gone'), answered with {status}"
    )
    assert bgtasks.findings() == []


def test_a_request_to_another_app_made_inside_an_endpoint_is_a_request_of_its_own(
    bgtasks: BackgroundTaskCapture,
) -> None:
    inner = FastAPI()

    @inner.post("/inner/{value}")
    async def inner_work(value: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(async_job, value)
        return {}

    outer = FastAPI()

    @outer.get("/outer")
    async def outer_work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(async_job, "outer")
        transport = httpx.ASGITransport(app=inner)
        async with httpx.AsyncClient(transport=transport, base_url="http://inner") as client:
            await client.post("/inner/called")
        return {}

    with TestClient(outer) as client:
        client.get("/outer")

    outer_task, inner_task = bgtasks.tasks
    assert outer_task.request == TaskRequest("GET", "/outer")
    assert inner_task.request == TaskRequest("POST", "/inner/called")
    assert (outer_task.status, inner_task.status) == (TaskStatus.RAN, TaskStatus.RAN)
    assert bgtasks.findings() == []


@pytest.mark.bgtasks(mode="defer")
def test_a_nan_timeout_is_refused_before_any_held_task_is_taken(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with TestClient(apps.fastapi_app((sync_job, ("held",)))) as client:
        client.post("/work")
    with pytest.raises(ValueError, match=r"got nan\.$"):
        bgtasks.run_deferred(timeout=math.nan)
    (record,) = bgtasks.deferred
    assert bgtasks.run_deferred() == [record]
    assert record.status is TaskStatus.RAN


# -- held tasks and their event loops ----------------------------------------------------------


def loop_reporting_app(seen: list[object], backend: str = "asyncio") -> FastAPI:
    """An app whose `POST /work` holds a task that notes the event loop it runs on."""
    app = FastAPI()

    def current() -> object:
        if backend == "trio":
            import trio

            return trio.lowlevel.current_trio_token()
        return asyncio.get_running_loop()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        seen.append(current())

        async def where() -> None:
            seen.append(current())

        background_tasks.add_task(where)
        return {}

    return app


@pytest.mark.bgtasks(mode="defer")
def test_each_held_task_runs_on_the_loop_of_the_client_that_scheduled_it(
    bgtasks: BackgroundTaskCapture,
) -> None:
    seen_a: list[object] = []
    seen_b: list[object] = []
    with (
        TestClient(loop_reporting_app(seen_a)) as a,
        TestClient(loop_reporting_app(seen_b)) as b,
    ):
        a.post("/work")
        b.post("/work")
        a.post("/work")
        assert len(bgtasks.run_deferred()) == 3
    loop_a, loop_b = seen_a[0], seen_b[0]
    assert loop_a is not loop_b
    assert seen_a == [loop_a] * 4
    assert seen_b == [loop_b] * 2


@pytest.mark.bgtasks(mode="defer")
def test_the_held_tasks_of_a_closed_client_run_together_on_one_loop_of_their_own(
    bgtasks: BackgroundTaskCapture,
) -> None:
    seen: list[object] = []
    with TestClient(loop_reporting_app(seen)) as client:
        client.post("/work")
        client.post("/work")
    assert len(bgtasks.run_deferred()) == 2
    client_loop, first, second = seen[0], seen[2], seen[3]
    assert first is second
    assert first is not client_loop


@pytest.mark.bgtasks(mode="defer")
def test_a_held_task_of_a_closed_client_does_not_move_to_another_open_one(
    bgtasks: BackgroundTaskCapture,
) -> None:
    seen_a: list[object] = []
    seen_b: list[object] = []
    with TestClient(loop_reporting_app(seen_a)) as a:
        a.post("/work")
    with TestClient(loop_reporting_app(seen_b)) as b:
        b.post("/work")
        bgtasks.run_deferred()
    assert seen_b[1] is seen_b[0]  # b's task on b's loop
    assert seen_a[1] is not seen_b[0]  # a's task on a loop of its own, not b's


@pytest.mark.bgtasks(mode="defer")
def test_tasks_held_on_a_trio_client_run_on_trio_after_it_closed(
    bgtasks: BackgroundTaskCapture,
) -> None:
    seen: list[object] = []
    with TestClient(loop_reporting_app(seen, "trio"), backend="trio") as client:
        client.post("/work")
    (record,) = bgtasks.run_deferred()
    assert record.status is TaskStatus.RAN
    assert seen[1] is not None  # ran with a trio token: on trio


# -- matching and rules ------------------------------------------------------------------------


def test_replace_calls_the_fake_with_a_partials_own_arguments(
    bgtasks: BackgroundTaskCapture,
) -> None:
    faked: list[tuple[Any, ...]] = []
    bgtasks.replace(sync_job, lambda *args, **kwargs: faked.append((args, kwargs)))
    with TestClient(apps.fastapi_app((functools.partial(sync_job, "a@b.com", flag=True), ()))) as c:
        c.post("/work")
    assert faked == [(("a@b.com",), {"flag": True})]
    bgtasks.assert_task_ran(sync_job, "a@b.com", flag=True)


class Mailer:
    """A service object made for each request, as apps do in their endpoints."""

    def __init__(self, sender: str) -> None:
        self.sender = sender

    def send(self, to: str, subject: str = "Hi") -> None:
        apps.ran.append((f"{self.sender}.send", to))


def mailer_app() -> FastAPI:
    app = FastAPI()

    @app.post("/signup/{to}")
    def signup(to: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(Mailer("noreply").send, to)
        return {}

    return app


def test_a_method_of_an_object_made_in_the_request_matches_by_its_class_function(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with TestClient(mailer_app()) as client:
        client.post("/signup/a@b.c")
        client.post("/signup/x@y.z")

    record = bgtasks.assert_task_added(Mailer.send, "a@b.c")
    assert record.call == "Mailer.send('a@b.c')"
    bgtasks.assert_task_added(Mailer.send, to="x@y.z", subject="Hi")
    bgtasks.assert_task_count(2, Mailer.send)
    bgtasks.assert_task_not_added(Mailer.send, "nobody@b.c")
    bgtasks.assert_tasks_in_order(task(Mailer.send, "a@b.c"), task(Mailer.send, "x@y.z"))
    # One instance's method still matches that instance only.
    mine = Mailer("noreply")
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_added(mine.send, "a@b.c")
    assert str(failure.value).splitlines()[-2] == (
        "Closest: Mailer.send('a@b.c') (#0) is the method of another object: pass Mailer.send "
        "itself to match it on any object."
    )


def test_rules_target_every_object_by_the_class_function(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.fail(task(Mailer.send, "a@b.c"))
    bgtasks.skip(task(Mailer.send, to="x@y.z"))
    with TestClient(mailer_app()) as client:
        client.post("/signup/a@b.c")
        client.post("/signup/x@y.z")
        client.post("/signup/ok@b.c")
    statuses = [record.status for record in bgtasks.tasks]
    assert statuses == [TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.RAN]
    assert apps.ran == [("noreply.send", "ok@b.c")]


def summarize(summary_id: int, url: str) -> None:
    pass


@pytest.mark.parametrize(
    ("add", "message"),
    [
        (
            lambda capture: capture.fail(task(summarize, url="http://x")),
            "task(): summarize(url='http://x') does not fit summarize(summary_id, url): missing "
            "a required argument: 'summary_id'. To match any value of an argument, pass "
            "unittest.mock.ANY for it.",
        ),
        (
            lambda capture: capture.skip(task(summarize, 1, link="http://x")),
            "task(): summarize(1, link='http://x') does not fit summarize(summary_id, url): no "
            "parameter named 'link'.",
        ),
        (
            # A function of a class fits with `self` or without: this fits neither way.
            lambda capture: capture.defer(task(Mailer.send, "a", "b", "c", "d")),
            "task(): Mailer.send('a', 'b', 'c', 'd') does not fit Mailer.send(self, to, "
            "subject='Hi'): too many positional arguments.",
        ),
    ],
    ids=["missing", "unknown", "method"],
)
def test_a_rule_that_can_never_apply_is_refused(
    bgtasks: BackgroundTaskCapture, add: Any, message: str
) -> None:
    with pytest.raises(TypeError) as error:
        add(bgtasks)
    assert str(error.value) == message
    bgtasks.fail(task(summarize, ANY, url="http://x"))  # ANY leaves it open: accepted


@pytest.mark.bgtasks(mode="skip")
def test_a_task_defined_in_the_endpoint_is_matched_by_its_name(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        def bg(user_id: int) -> None:
            pass

        background_tasks.add_task(bg, 7)
        background_tasks.add_task(lambda: None)
        return {}

    bgtasks.defer("bg")
    with TestClient(app) as client:
        client.post("/work")

    record = bgtasks.assert_task_added("bg", 7)
    assert record.status is TaskStatus.DEFERRED
    bgtasks.assert_task_added("bg", user_id=7)
    bgtasks.assert_task_not_added("bg", 8)
    bgtasks.assert_task_added("<lambda>")
    bgtasks.assert_tasks_in_order("bg", "<lambda>")
    assert bgtasks.run_deferred(only=task("bg", 7)) == [record]
    with pytest.raises(AssertionError) as failure:
        bgtasks.assert_task_added("send_welcome_email")
    assert str(failure.value).splitlines()[0] == (
        "No background task matching send_welcome_email(...) was added."
    )


def test_call_sites_outside_the_rootdir_are_absolute(
    bgtasks: BackgroundTaskCapture, tmp_path: Any
) -> None:
    path = tmp_path / "elsewhere.py"
    path.write_text(
        "from starlette.background import BackgroundTask\n\n"
        "def make(func):\n"
        "    return BackgroundTask(func, 'from elsewhere')\n"
    )
    spec = importlib.util.spec_from_file_location("elsewhere", path)
    assert spec is not None
    assert spec.loader is not None
    elsewhere = importlib.util.module_from_spec(spec)  # not kept in sys.modules
    spec.loader.exec_module(elsewhere)

    elsewhere.make(sync_job)
    (record,) = bgtasks.tasks
    assert record.added_at == f"{path}:4"
    assert record.call_site == (str(path), 4)


@pytest.mark.anyio
async def test_a_task_scheduled_by_a_running_task_names_it_as_its_parent(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        async def first() -> None:
            background_tasks.add_task(async_job, "child")

        background_tasks.add_task(first)
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/work")
    first, child = bgtasks.tasks
    assert child.parent is first
    assert first.parent is None
    await anyio.sleep(0)


# -- whole sessions ----------------------------------------------------------------------------

APP = """
from fastapi import BackgroundTasks, FastAPI

done = []


def job(value):
    done.append(value)


def make_app():
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks):
        background_tasks.add_task(job, "x")
        return {}

    return app
"""


STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse
from starlette.routing import Route

done = []


def job(value):
    done.append(value)


async def work(request):
    return JSONResponse({}, background=BackgroundTask(job, "x"))


def make_app():
    return Starlette(routes=[Route("/work", work, methods=["POST"])])
"""


@pytest.mark.slow
def test_an_instrumentation_wrapper_installed_after_the_first_capture(
    pytester: pytest.Pytester,
) -> None:
    """Sentry's Starlette integration replaces `Starlette.__call__` with a wrapper that keeps
    the one it replaced in its closure and says nothing of it (no `__wrapped__`)."""
    pytester.makepyfile(apptools=APP)
    pytester.makeconftest(
        """
        import pytest
        from starlette.applications import Starlette
        from apptools import make_app

        @pytest.fixture
        def app():
            return make_app()

        @pytest.fixture
        def instrumented():
            old = Starlette.__call__

            async def sentry_call(self, scope, receive, send):
                return await old(self, scope, receive, send)

            Starlette.__call__ = sentry_call
            yield
            Starlette.__call__ = old
        """
    )
    pytester.makepyfile(
        """
        from apptools import job

        def test_first(bg_client, bgtasks):
            bg_client.post("/work")
            bgtasks.assert_task_ran(job, "x")

        def test_instrumented(instrumented, bg_client, bgtasks):
            assert bg_client.post("/work").status_code == 200
            (record,) = bgtasks.tasks
            assert str(record.request) == "POST /work"
            assert str(record.status) == "ran"

        def test_after(bg_client, bgtasks):
            bg_client.post("/work")
            assert len(bgtasks.tasks) == 1
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)


@pytest.mark.slow
def test_a_marker_on_one_case_of_a_parametrized_test_captures_that_case_only(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(apptools=APP)
    pytester.makepyfile(
        """
        import pytest
        from starlette.testclient import TestClient
        from apptools import done, make_app

        @pytest.mark.parametrize(
            "marked", [pytest.param(True, marks=pytest.mark.bgtasks(mode="skip")), False]
        )
        def test_case(marked, request):
            done.clear()
            with TestClient(make_app()) as client:
                client.post("/work")
            assert ("bgtasks" in request.fixturenames) is marked
            assert done == ([] if marked else ["x"])
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


@pytest.mark.slow
def test_a_task_of_a_request_that_began_in_an_earlier_test_is_not_a_later_tests(
    pytester: pytest.Pytester,
) -> None:
    """A live server: the request of the first test makes its task only once the second test
    runs. The task belongs to the capture active when its request began: gone, so no capture
    records it, and it runs as without the plugin (not skipped, as the second test's mode says)."""
    pytester.makeconftest(
        """
        import socket
        import threading

        import pytest
        import uvicorn
        from fastapi import BackgroundTasks, FastAPI

        started = threading.Event()
        release = threading.Event()
        done = []


        def job(value):
            done.append(value)


        app = FastAPI()


        @app.post("/slow")
        def slow(background_tasks: BackgroundTasks):
            started.set()
            release.wait(10)
            background_tasks.add_task(job, "late")
            return {}


        @pytest.fixture(scope="session")
        def server():
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            while not server.started:
                threading.Event().wait(0.01)
            yield f"http://127.0.0.1:{port}"
            server.should_exit = True
            thread.join(10)
        """
    )
    pytester.makepyfile(
        """
        import threading
        import time

        import httpx
        import pytest

        from conftest import done, release, started

        requests = []


        def test_starts_a_request(server, bgtasks):
            thread = threading.Thread(target=httpx.post, args=(f"{server}/slow",))
            thread.start()
            requests.append(thread)
            assert started.wait(10)  # the request began while this test captures


        @pytest.mark.bgtasks(mode="skip")
        def test_while_it_ends(server, bgtasks):
            release.set()
            requests[0].join(10)
            for _ in range(500):  # the server runs the task after it sent the response
                if done:
                    break
                time.sleep(0.01)
            assert done == ["late"]
            assert bgtasks.tasks == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


@pytest.mark.slow
def test_a_second_in_process_run_in_a_session_that_never_imported_starlette(
    pytester: pytest.Pytester,
) -> None:
    """pytester's in-process runs drop the modules they imported: the second run imports
    Starlette afresh, and the plugin must patch that Starlette, not the first run's. (A Starlette
    app: the pydantic-core of the lowest environment, 2.6, cannot be imported twice in one
    process, so FastAPI cannot.)"""
    pytester.makepyfile(apptools=STARLETTE_APP)
    pytester.makepyfile(
        test_outer="""
        import pathlib
        import sys

        INNER = '''
        from apptools import job

        def test_inner(bg_client, bgtasks):
            bg_client.post("/work")
            bgtasks.assert_task_ran(job, "x")
        '''

        def test_two_runs(pytester):
            assert "starlette" not in sys.modules
            here = pathlib.Path(__file__).parent
            (pytester.path / "apptools.py").write_text((here / "apptools.py").read_text())
            pytester.makeconftest(
                "import pytest\\nfrom apptools import make_app\\n\\n"
                "@pytest.fixture\\ndef app():\\n    return make_app()\\n"
            )
            pytester.makepyfile(test_inner=INNER)
            for _ in range(2):
                pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "pytester", "-p", "no:cacheprovider", "test_outer.py"
    )
    result.assert_outcomes(passed=1)
