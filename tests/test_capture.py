"""What a capture records, for every way an app schedules work, and what it does with it."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import gc
import inspect
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp

import apps
import manual
import pytest_bgtasks
from apps import Mailer, Notifier, async_job, boom, sync_job
from pytest_bgtasks import (
    BackgroundTaskCapture,
    ExpectedTask,
    SimulatedTaskError,
    TaskRequest,
    TaskStatus,
    assert_task_added,
    task,
)

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

WORK = TaskRequest("POST", "/work")


def post(app: ASGIApp, path: str = "/work") -> int:
    with TestClient(app) as client:
        return client.post(path).status_code


@pytest.mark.parametrize("func", [sync_job, async_job], ids=["def", "async-def"])
@pytest.mark.parametrize("way", apps.WAYS)
def test_every_way_of_scheduling_is_recorded_with_request_and_call_site(
    bgtasks: BackgroundTaskCapture, way: str, func: Callable[..., Any]
) -> None:
    assert post(apps.scheduling_app(way, func)) == 200

    (record,) = bgtasks.tasks
    assert record.func is func
    assert (record.args, record.kwargs) == (("x",), {})
    assert record.request == WORK
    assert record.added_at == apps.site("dependency" if way == "sub_dependency" else way)
    assert record.status is TaskStatus.RAN
    assert record.index == 0
    assert apps.ran == [(record.name, "x")]


def test_plain_starlette_app_without_fastapi(bgtasks: BackgroundTaskCapture) -> None:
    app = apps.starlette_app((sync_job, ("a",)), (async_job, ("b",)))
    assert post(app) == 200

    first, second = bgtasks.tasks
    assert repr(first) == "sync_job('a') [ran] POST /work"
    assert repr(second) == "async_job('b') [ran] POST /work"
    assert first.added_at == second.added_at == apps.site("starlette")
    assert apps.ran == [("sync_job", "a"), ("async_job", "b")]


def test_dependency_and_endpoint_add_to_the_same_batch(bgtasks: BackgroundTaskCapture) -> None:
    app = FastAPI()

    def audit(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(boom, "in dependency")

    @app.post("/work", dependencies=[Depends(audit)])
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(sync_job, "from endpoint")
        return {}

    with pytest.raises(ZeroDivisionError):
        post(app)

    # One batch: the dependency's task failed, so the endpoint's, later in it, never ran.
    failed, later = bgtasks.tasks
    assert failed.status is TaskStatus.FAILED
    assert later.status is TaskStatus.NOT_RUN
    assert later.reason == (
        "not run: an earlier task of its response failed, "
        "boom('in dependency') raised ZeroDivisionError('boom in dependency')"
    )
    assert apps.ran == []


def test_a_task_that_schedules_another_on_its_batch(bgtasks: BackgroundTaskCapture) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        def first() -> None:
            apps.ran.append(("first", None))
            background_tasks.add_task(async_job, "second")

        background_tasks.add_task(first)
        return {}

    assert post(app) == 200
    assert [record.call for record in bgtasks.tasks] == ["first()", "async_job('second')"]
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN, TaskStatus.RAN]
    assert apps.ran == [("first", None), ("async_job", "second")]


class Stamp:
    def __call__(self, owner: str, to: str) -> None:
        apps.ran.append(("Stamp", to))


@pytest.mark.parametrize(
    ("func", "name", "call", "did"),
    [
        (Mailer("m").send, "Mailer.send", "Mailer.send('a')", ("m.send", "a")),
        (
            functools.partial(sync_job, flag=True),
            "sync_job",
            "sync_job('a', flag=True)",
            ("sync_job", "a"),
        ),
        (Notifier(), "Notifier.__call__", "Notifier.__call__('a')", ("Notifier", "a")),
        (
            functools.update_wrapper(Notifier(), sync_job),
            "Notifier.__call__",
            "Notifier.__call__('a')",
            ("Notifier", "a"),
        ),
        (
            types.MethodType(Stamp(), "owner"),
            "Stamp.__call__",
            "Stamp.__call__('a')",
            ("Stamp", "a"),
        ),
        (lambda to: apps.ran.append(("lambda", to)), "<lambda>", "<lambda>('a')", ("lambda", "a")),
    ],
    ids=[
        "bound-method",
        "partial",
        "callable-instance",
        "callable-instance-named-as-a-function",
        "method-of-a-callable-instance",
        "lambda",
    ],
)
def test_kinds_of_callables_are_named_as_they_are_called(
    bgtasks: BackgroundTaskCapture, func: Callable[..., Any], name: str, call: str, did: object
) -> None:
    post(apps.fastapi_app((func, ("a",))))

    record = assert_task_added(func, "a")
    assert record.func is func
    assert (record.name, record.call) == (name, call)
    assert record.problem is None
    assert apps.ran == [did]


def test_a_partial_matches_as_the_function_it_wraps(bgtasks: BackgroundTaskCapture) -> None:
    post(apps.fastapi_app((functools.partial(sync_job, "p"), ())))

    record = bgtasks.assert_task_added(sync_job, "p")
    assert (record.args, record.kwargs) == ((), {})  # what add_task was given
    assert record.call == "sync_job('p')"  # what will be called
    bgtasks.assert_task_added(sync_job, value="p")


def test_bound_methods_match_with_equality(bgtasks: BackgroundTaskCapture) -> None:
    mailer = Mailer("m")
    post(apps.fastapi_app((mailer.send, ("a",))))

    bgtasks.assert_task_added(mailer.send, "a")  # a new bound method object, equal to it
    # Bound methods are equal when bound to the same object, even if another one is equal.
    bgtasks.assert_task_not_added(Mailer("m").send)


class StrictTask(BackgroundTask):
    """A task class that refuses attributes it does not know, as some apps guard theirs."""

    def __setattr__(self, name: str, value: object) -> None:
        if name not in ("func", "args", "kwargs", "is_async"):
            raise AttributeError(f"StrictTask has no attribute {name!r}")
        super().__setattr__(name, value)


def test_a_task_class_that_refuses_new_attributes_is_recorded_all_the_same(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work() -> Response:
        return Response(background=StrictTask(sync_job, "strict"))

    assert post(app) == 200
    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.RAN
    assert apps.ran == [("sync_job", "strict")]
    bgtasks.assert_task_ran(sync_job, "strict")


def test_a_task_outside_any_request_has_no_request(bgtasks: BackgroundTaskCapture) -> None:
    import anyio

    batch = StarletteBackgroundTasks()
    batch.add_task(sync_job, "no request")
    anyio.run(batch)

    (record,) = bgtasks.tasks
    assert record.request is None
    assert repr(record) == "sync_job('no request') [ran]"
    assert record.added_at == f"{os.path.relpath(__file__)}:{_line_of('no request')}"


def test_a_copy_of_a_task_is_a_task_of_its_own(bgtasks: BackgroundTaskCapture) -> None:
    original = BackgroundTask(sync_job, "a")
    anyio.run(copy.copy(original))  # the copy carries the original's attributes

    first, second = bgtasks.tasks
    assert first.status is TaskStatus.PENDING
    assert second.status is TaskStatus.RAN
    assert second.added_at is None  # created by copying, not by a call


class GuardedTask(BackgroundTask):
    """A subclass that takes no attribute but its own, so the record cannot ride on it."""

    def __setattr__(self, name: str, value: object) -> None:
        if name not in ("func", "args", "kwargs", "is_async"):
            raise AttributeError(name)
        super().__setattr__(name, value)


def test_a_task_that_takes_no_attribute_is_still_recorded(bgtasks: BackgroundTaskCapture) -> None:
    guarded = GuardedTask(sync_job, "a")
    other = GuardedTask(async_job, "b")
    anyio.run(guarded)

    first, second = bgtasks.tasks
    assert (first.status, second.status) == (TaskStatus.RAN, TaskStatus.PENDING)
    assert bgtasks.assert_task_ran(sync_job, "a") is first
    assert apps.ran == [("sync_job", "a")]
    assert other.func is async_job


def _line_of(text: str) -> int:
    with open(__file__) as source:
        for number, line in enumerate(source, start=1):
            if f'"{text}")' in line and "add_task" in line:
                return number
    raise LookupError(text)


def test_without_a_capture_nothing_is_recorded_and_tasks_run(
    bgtasks: BackgroundTaskCapture,
) -> None:
    bgtasks.stop()
    try:
        post(apps.fastapi_app((sync_job, ("a",))))
    finally:
        bgtasks.start()
    assert bgtasks.tasks == []
    assert apps.ran == [("sync_job", "a")]


# -- modes -----------------------------------------------------------------------------------


@pytest.mark.bgtasks(mode="skip")
def test_skip_mode_records_and_never_runs(bgtasks: BackgroundTaskCapture) -> None:
    post(apps.fastapi_app((sync_job, ("a",)), (async_job, ("b",))))

    assert [record.status for record in bgtasks.tasks] == [TaskStatus.SKIPPED] * 2
    assert apps.ran == []


@pytest.mark.bgtasks(mode="defer")
def test_defer_mode_holds_tasks_until_run_deferred(bgtasks: BackgroundTaskCapture) -> None:
    post(apps.fastapi_app((sync_job, ("a",)), (async_job, ("b",))))
    assert apps.ran == []
    assert bgtasks.deferred == bgtasks.tasks
    # Held tasks are a finding that only assert_all_run=True makes a failure.
    assert [finding.kind for finding in bgtasks.findings()] == ["unrun"]

    ran = bgtasks.run_deferred()

    assert ran == bgtasks.tasks
    assert [record.status for record in ran] == [TaskStatus.RAN] * 2
    assert apps.ran == [("sync_job", "a"), ("async_job", "b")]
    assert bgtasks.deferred == []
    assert bgtasks.run_deferred() == []


@pytest.mark.bgtasks(mode="defer")
def test_a_task_is_pending_while_it_runs(bgtasks: BackgroundTaskCapture) -> None:
    seen: list[TaskStatus] = []

    def look() -> None:
        seen.append(bgtasks.tasks[-1].status)

    app = apps.fastapi_app((look, ()))
    post(app)
    bgtasks.run_deferred()
    bgtasks.mode = "run"
    post(app)
    assert seen == [TaskStatus.PENDING, TaskStatus.PENDING]
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN, TaskStatus.RAN]


def test_mode_can_change_inside_the_test(bgtasks: BackgroundTaskCapture) -> None:
    app = apps.fastapi_app((sync_job, ("a",)))
    bgtasks.mode = "skip"
    post(app)
    bgtasks.mode = "run"
    post(app)

    assert [record.status for record in bgtasks.tasks] == [TaskStatus.SKIPPED, TaskStatus.RAN]
    with pytest.raises(
        ValueError,
        match=r"Unknown background task mode 'later'; expected one of: run, defer, skip, worker\.",
    ):
        bgtasks.mode = "later"  # type: ignore[assignment]  # the misuse under test
    assert bgtasks.mode == "run"


# -- rules -----------------------------------------------------------------------------------


def test_fail_raises_instead_of_running_and_stops_the_rest_of_the_response(
    bgtasks: BackgroundTaskCapture,
) -> None:
    bgtasks.fail(sync_job, ConnectionRefusedError("smtp down"))
    assert post(apps.fastapi_app((sync_job, ("a",)), (async_job, ("b",)))) == 200

    failed, later = bgtasks.tasks
    assert failed.status is TaskStatus.FAILED
    assert failed.simulated
    assert isinstance(failed.exception, ConnectionRefusedError)
    assert bgtasks.assert_task_failed(sync_job, "a") is failed
    assert later.status is TaskStatus.NOT_RUN
    assert later.reason == (
        "not run: an earlier task of its response failed, "
        "sync_job('a') raised ConnectionRefusedError('smtp down')"
    )
    assert apps.ran == []


def test_fail_without_exception_raises_a_clear_default(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.fail(sync_job)
    post(apps.fastapi_app((sync_job, ("a",))))

    record = bgtasks.assert_task_failed(sync_job)
    assert isinstance(record.exception, SimulatedTaskError)
    assert str(record.exception) == "sync_job failed (bgtasks.fail)"
    assert record.describe().splitlines()[1:] == [
        "    simulated by bgtasks.fail(): SimulatedTaskError('sync_job failed (bgtasks.fail)')"
    ]


def test_fail_accepts_an_exception_class(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.fail(sync_job, TimeoutError)
    post(apps.fastapi_app((sync_job, ("a",))))
    assert type(bgtasks.assert_task_failed(sync_job).exception) is TimeoutError


def test_fail_times_fails_only_the_first_matching_runs(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.fail(sync_job, times=2)
    app = apps.fastapi_app((sync_job, ("a",)))
    for _ in range(3):
        post(app)

    statuses = [record.status for record in bgtasks.tasks]
    assert statuses == [TaskStatus.FAILED, TaskStatus.FAILED, TaskStatus.RAN]
    assert apps.ran == [("sync_job", "a")]

    bgtasks.fail(async_job, times=1)
    app = apps.fastapi_app((async_job, ("b",)))
    post(app)
    post(app)
    assert [record.status for record in bgtasks.tasks[3:]] == [TaskStatus.FAILED, TaskStatus.RAN]


def test_fail_with_propagate_reaches_the_client(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.fail(async_job, KeyError("k"), propagate=True)
    with pytest.raises(KeyError):
        post(apps.fastapi_app((async_job, ("a",)), (sync_job, ("b",))))

    assert [record.status for record in bgtasks.tasks] == [TaskStatus.FAILED, TaskStatus.NOT_RUN]


@pytest.mark.bgtasks(on_dropped="ignore")  # the response is reused on purpose
def test_a_task_stopped_by_a_propagated_failure_runs_when_its_response_is_sent_again(
    bgtasks: BackgroundTaskCapture,
) -> None:
    bgtasks.fail(sync_job, KeyError("k"), times=1, propagate=True)
    batch = StarletteBackgroundTasks()
    batch.add_task(sync_job, "a")
    batch.add_task(async_job, "b")
    response = PlainTextResponse("ok", background=batch)

    async def endpoint(request: Request) -> Response:
        return response

    with TestClient(Starlette(routes=[Route("/", endpoint)])) as client:
        with pytest.raises(KeyError):
            client.get("/")
        assert client.get("/").status_code == 200

    failed, later, again = bgtasks.tasks
    assert (failed.status, later.status, again.status) == (
        TaskStatus.FAILED,
        TaskStatus.RAN,
        TaskStatus.RAN,
    )
    assert apps.ran == [("sync_job", "a"), ("async_job", "b")]


def test_a_task_made_in_a_request_and_awaited_by_the_test_after_it_raises_to_the_test(
    bgtasks: BackgroundTaskCapture,
) -> None:
    kept: list[BackgroundTask] = []

    async def endpoint(request: Request) -> Response:
        kept.append(BackgroundTask(boom, "later"))
        return PlainTextResponse("ok")

    with TestClient(Starlette(routes=[Route("/", endpoint)])) as client:
        assert client.get("/").status_code == 200
    with pytest.raises(ZeroDivisionError, match="boom later"):
        asyncio.run(kept[0]())

    assert bgtasks.assert_task_failed(boom, "later").request == TaskRequest("GET", "/")
    assert bgtasks.findings() == []  # raised in the test, which saw it


def test_rules_can_target_one_call_with_task(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.skip(task(sync_job, "b"))
    post(apps.fastapi_app((sync_job, ("a",)), (sync_job, ("b",)), (sync_job, ("c",))))

    statuses = [record.status for record in bgtasks.tasks]
    assert statuses == [TaskStatus.RAN, TaskStatus.SKIPPED, TaskStatus.RAN]
    assert apps.ran == [("sync_job", "a"), ("sync_job", "c")]


def test_the_last_matching_rule_wins(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.skip(sync_job)
    bgtasks.fail(task(sync_job, "b"))
    post(apps.fastapi_app((sync_job, ("a",)), (sync_job, ("b",))))

    assert [record.status for record in bgtasks.tasks] == [TaskStatus.SKIPPED, TaskStatus.FAILED]


def test_a_rule_overrides_the_mode(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.mode = "skip"
    bgtasks.defer(async_job)
    post(apps.fastapi_app((sync_job, ("a",)), (async_job, ("b",))))

    assert [record.status for record in bgtasks.tasks] == [TaskStatus.SKIPPED, TaskStatus.DEFERRED]
    bgtasks.run_deferred()
    assert apps.ran == [("async_job", "b")]


@pytest.mark.parametrize("job", [sync_job, async_job], ids=["def-task", "async-def-task"])
@pytest.mark.parametrize("fake_kind", ["def", "async-def"])
def test_replace_runs_the_fake_with_the_tasks_arguments(
    bgtasks: BackgroundTaskCapture, fake_kind: str, job: Callable[..., Any]
) -> None:
    seen: list[tuple[str, bool]] = []

    def fake(value: str, *, flag: bool = False) -> None:
        seen.append((value, flag))

    async def async_fake(value: str, *, flag: bool = False) -> None:
        seen.append((value, flag))

    bgtasks.replace(job, fake if fake_kind == "def" else async_fake)
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(job, "a", flag=True)
        return {}

    post(app)
    assert seen == [("a", True)]
    assert apps.ran == []
    assert bgtasks.assert_task_ran(job, "a", flag=True).func is job


def test_a_failing_fake_fails_the_task_for_real(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.replace(sync_job, boom)
    with pytest.raises(ZeroDivisionError):
        post(apps.fastapi_app((sync_job, ("a",))))
    record = bgtasks.assert_task_failed(sync_job)
    assert not record.simulated


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda c: c.fail(sync_job, "down"),
            TypeError,
            "bgtasks.fail() expects an exception instance or class, got 'down' (str).",
        ),
        (
            lambda c: c.fail(sync_job, ZeroDivisionError("x"), times=0),
            ValueError,
            "bgtasks.fail() expects times= to be a positive int, got 0.",
        ),
        (
            lambda c: c.fail(sync_job, times=True),
            TypeError,
            "bgtasks.fail() expects times= to be a positive int, got True.",
        ),
        (
            lambda c: c.replace(sync_job, "fake"),
            TypeError,
            "bgtasks.replace() expects a callable to run instead of sync_job, got 'fake' (str).",
        ),
        (
            lambda c: c.replace(task(async_job, "a"), None),
            TypeError,
            "bgtasks.replace() expects a callable to run instead of async_job, got None (NoneType).",
        ),
        (
            lambda c: c.defer(42),
            TypeError,
            "bgtasks.defer() expects a task function, its name, or task(func, *args, **kwargs), got 42 (int).",
        ),
        (
            lambda c: c.fail(None),
            TypeError,
            "bgtasks.fail() expects a task function, its name, or task(func, *args, **kwargs), got None (NoneType).",
        ),
        (
            lambda c: c.skip(42),
            TypeError,
            "bgtasks.skip() expects a task function, its name, or task(func, *args, **kwargs), got 42 (int).",
        ),
        (
            lambda c: c.replace(42, sync_job),
            TypeError,
            "bgtasks.replace() expects a task function, its name, or task(func, *args, **kwargs), got 42 (int).",
        ),
        (
            lambda c: c.fail(ExpectedTask(sync_job, (), {"flag": True})),  # made without task()
            TypeError,
            "bgtasks.fail(): sync_job(flag=True) does not fit sync_job(value, *, flag=False): "
            "missing a required argument: 'value'. To match any value of an argument, pass "
            "unittest.mock.ANY for it.",
        ),
    ],
    ids=[
        "fail-not-exception",
        "fail-times",
        "fail-times-bool",
        "replace-not-callable",
        "replace-with-none",
        "defer-not-callable",
        "fail-no-target",
        "skip-not-callable",
        "replace-not-a-target",
        "fail-cannot-fit",
    ],
)
def test_rules_reject_bad_input(
    bgtasks: BackgroundTaskCapture,
    call: Callable[[BackgroundTaskCapture], object],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error) as raised:
        call(bgtasks)
    assert str(raised.value) == message
    if "times=" not in message:
        manual.assert_listed(message)
    # Nothing was half-added: the task runs as the mode says.
    post(apps.fastapi_app((sync_job, ("a",))))
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN]


# -- blocks ----------------------------------------------------------------------------------


def test_a_block_records_only_what_is_scheduled_inside_it(bgtasks: BackgroundTaskCapture) -> None:
    app = apps.fastapi_app((sync_job, ("a",)))
    post(app)
    with bgtasks.capture() as block:
        post(apps.fastapi_app((async_job, ("b",))))
    post(app)

    (inside,) = block.tasks
    assert inside.call == "async_job('b')"
    block.assert_task_added(async_job, "b")
    block.assert_task_not_added(sync_job)
    assert [record.call for record in bgtasks.tasks] == [
        "sync_job('a')",
        "async_job('b')",
        "sync_job('a')",
    ]
    assert inside is bgtasks.tasks[1]
    assert repr(block) == "<TaskLog 1 background task>"
    assert repr(bgtasks) == "<BackgroundTaskCapture 3 background tasks>"


def test_a_block_needs_an_active_capture() -> None:
    capture = BackgroundTaskCapture()
    blocked = capture.capture()
    with pytest.raises(RuntimeError, match=r"bgtasks.capture\(\) needs the capture to be active\."):
        blocked.__enter__()


def test_a_block_that_outlives_its_capture_records_tasks_that_run_as_starlette_runs_them(
    bgtasks: BackgroundTaskCapture,
) -> None:
    bgtasks.mode = "skip"
    with bgtasks.capture() as block:
        bgtasks.stop()
        post(apps.fastapi_app((sync_job, ("a",))))

    assert [record.call for record in block.tasks] == ["sync_job('a')"]
    assert bgtasks.tasks == []
    assert apps.ran == [("sync_job", "a")]


def test_a_task_of_a_request_that_began_before_a_capture_runs_as_starlette_runs_it() -> None:
    first = BackgroundTaskCapture()
    later = BackgroundTaskCapture(mode="skip")

    async def endpoint(request: Request) -> Response:
        batch = StarletteBackgroundTasks()
        batch.add_task(sync_job, "a")
        first.stop()  # as a test ends while its request goes on,
        later.start()  # and the next test's capture starts
        return PlainTextResponse("ok", background=batch)

    first.start()
    try:
        assert post(Starlette(routes=[Route("/work", endpoint, methods=["POST"])])) == 200
    finally:
        later.stop()
    assert [record.call for record in first.tasks] == ["sync_job('a')"]
    assert later.tasks == []
    assert apps.ran == [("sync_job", "a")]


def test_the_core_works_as_a_plain_context_manager() -> None:
    with BackgroundTaskCapture(mode="skip") as capture:
        post(apps.fastapi_app((sync_job, ("a",))))
    capture.assert_task_added(sync_job, "a")
    assert capture.tasks[0].status is TaskStatus.SKIPPED
    assert apps.ran == []
    with pytest.raises(RuntimeError, match=r"^This capture is active already\.$"), capture, capture:
        pass


@pytest.mark.parametrize(
    ("helper", "arguments"),
    [
        ("assert_task_added", (sync_job,)),
        ("assert_task_not_added", (sync_job,)),
        ("assert_task_ran", (sync_job,)),
        ("assert_task_failed", (sync_job,)),
        ("assert_task_count", (0,)),
        ("assert_no_tasks", ()),
        ("assert_tasks_in_order", (sync_job,)),
    ],
)
def test_free_assertions_need_an_active_capture(helper: str, arguments: tuple[object, ...]) -> None:
    with pytest.raises(RuntimeError) as error:
        getattr(pytest_bgtasks, helper)(*arguments)
    message = (
        f"{helper}() needs an active background task capture: request the `bgtasks` or "
        "`bg_client` fixture (or mark the test with @pytest.mark.bgtasks)."
    )
    assert str(error.value) == message
    manual.assert_listed(message)


# -- deferred tasks --------------------------------------------------------------------------


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_only_and_limit(bgtasks: BackgroundTaskCapture) -> None:
    post(apps.fastapi_app((sync_job, ("a",)), (async_job, ("b",)), (sync_job, ("c",))))

    assert [record.call for record in bgtasks.run_deferred(only=task(sync_job, "c"))] == [
        "sync_job('c')"
    ]
    assert [record.call for record in bgtasks.run_deferred(limit=1)] == ["sync_job('a')"]
    assert bgtasks.run_deferred(only=sync_job) == []
    assert [record.call for record in bgtasks.run_deferred()] == ["async_job('b')"]
    assert apps.ran == [("sync_job", "c"), ("sync_job", "a"), ("async_job", "b")]


@pytest.mark.bgtasks(mode="defer")
def test_rules_apply_when_held_tasks_run(bgtasks: BackgroundTaskCapture) -> None:
    for call in [(sync_job, ("skip me",)), (async_job, ("fail me",)), (sync_job, ("fake me",))]:
        post(apps.fastapi_app(call))
    faked: list[str] = []
    bgtasks.skip(task(sync_job, "skip me"))
    bgtasks.fail(async_job)
    bgtasks.replace(task(sync_job, "fake me"), faked.append)
    bgtasks.defer(sync_job)  # the last rule for sync_job; holding again is not what running does

    bgtasks.run_deferred()

    statuses = [record.status for record in bgtasks.tasks]
    assert statuses == [TaskStatus.SKIPPED, TaskStatus.FAILED, TaskStatus.RAN]
    assert bgtasks.tasks[1].simulated
    assert faked == ["fake me"]
    assert apps.ran == []


@pytest.mark.bgtasks(on_dropped="ignore")
def test_tasks_a_held_task_runs_itself_are_not_held_again(bgtasks: BackgroundTaskCapture) -> None:
    made: list[BackgroundTask] = []

    async def parent() -> None:
        batch = StarletteBackgroundTasks()
        batch.add_task(boom, "inside")
        batch.add_task(sync_job, "after boom")
        with pytest.raises(ZeroDivisionError):
            await batch()
        made.append(BackgroundTask(sync_job, "made, not run"))

    bgtasks.defer(parent)
    post(apps.fastapi_app((parent, ())))
    bgtasks.run_deferred()

    # What the parent ran is settled as Starlette left it; what it only made, run_deferred runs.
    statuses = [(record.call, record.status) for record in bgtasks.tasks]
    assert statuses == [
        ("parent()", TaskStatus.RAN),
        ("boom('inside')", TaskStatus.FAILED),
        ("sync_job('after boom')", TaskStatus.NOT_RUN),
        ("sync_job('made, not run')", TaskStatus.RAN),
    ]
    assert apps.ran == [("sync_job", "made, not run")]
    # Run by run_deferred(), it has run: called again, it runs again, as a record of its own.
    anyio.run(made[0])
    again = bgtasks.tasks[-1]
    assert len(bgtasks.tasks) == 5
    assert again.problem is not None
    assert again.problem.startswith("this BackgroundTask object already ran as #3 ")


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_runs_tasks_that_running_tasks_schedule(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        def first() -> None:
            background_tasks.add_task(async_job, "scheduled by first")

        background_tasks.add_task(first)
        background_tasks.add_task(sync_job, "second")
        return {}

    post(app)
    ran = bgtasks.run_deferred()

    assert [record.call for record in ran] == [
        "first()",
        "sync_job('second')",
        "async_job('scheduled by first')",
    ]
    assert apps.ran == [("sync_job", "second"), ("async_job", "scheduled by first")]


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_stops_a_task_that_schedules_itself_forever(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        def again() -> None:
            background_tasks.add_task(again)  # site:again

        background_tasks.add_task(again)
        return {}

    post(app)
    with pytest.raises(RuntimeError) as error:
        bgtasks.run_deferred()
    message = (
        "bgtasks.run_deferred() stopped: tasks kept scheduling tasks, 101 generations deep. "
        "Next would be:\n"
        f"- again() [deferred]  ({apps.site('again', __file__)})\n"
        "A task that schedules itself needs a condition that ends it; pass limit= to run a "
        "bounded number."
    )
    assert str(error.value) == message
    manual.assert_listed(message)
    assert len(bgtasks.tasks) == 102  # the first, then 101 generations
    assert len(bgtasks.deferred) == 1
    # The guard holds: running again stops at once, before running anything.
    with pytest.raises(RuntimeError, match="101 generations deep"):
        bgtasks.run_deferred(limit=3)
    assert len(bgtasks.tasks) == 102


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_timeout_names_the_task(bgtasks: BackgroundTaskCapture) -> None:
    import anyio

    async def never_finishes() -> None:
        await anyio.sleep_forever()

    post(apps.fastapi_app((never_finishes, ()), (sync_job, ("same response",))))
    post(apps.fastapi_app((sync_job, ("other response",))))
    with pytest.raises(TimeoutError) as error:
        bgtasks.run_deferred(timeout=0.1)
    message = (
        f"Deferred task never_finishes() ({apps.site('fastapi')}) did not finish within "
        "0.1 seconds."
    )
    assert str(error.value) == message
    manual.assert_listed(message)
    stuck, same, other = bgtasks.tasks
    assert stuck.status is TaskStatus.CANCELLED
    assert stuck.reason == "cancelled: did not finish within timeout=0.1s"
    # As when Starlette's run of a response is cancelled: the rest of it never starts.
    assert same.status is TaskStatus.CANCELLED
    assert same.reason == "never started: an earlier task was cancelled"
    # An assertion that wanted them to run says what became of them, in a sentence.
    with pytest.raises(
        AssertionError,
        match=r"\nThe matching task #0 was cancelled: did not finish within timeout=0\.1s\.\n",
    ):
        bgtasks.assert_task_ran(never_finishes)
    with pytest.raises(
        AssertionError,
        match=r"\nThe matching task #1 was cancelled: an earlier task was cancelled\.\n",
    ):
        bgtasks.assert_task_failed(sync_job, "same response")
    assert bgtasks.deferred == [other]  # held still; run_deferred() can go on
    assert bgtasks.run_deferred() == [other]
    assert apps.ran == [("sync_job", "other response")]


@pytest.mark.bgtasks(mode="defer")
def test_a_failing_deferred_task_stops_its_response_and_raises_after_the_others(
    bgtasks: BackgroundTaskCapture,
) -> None:
    first = apps.fastapi_app((boom, ("1",)), (sync_job, ("same response",)))
    other = apps.fastapi_app((async_job, ("other response",)))
    post(first)
    post(other)

    with pytest.raises(ZeroDivisionError, match="boom 1"):
        bgtasks.run_deferred()

    statuses = [record.status for record in bgtasks.tasks]
    assert statuses == [TaskStatus.FAILED, TaskStatus.NOT_RUN, TaskStatus.RAN]
    assert apps.ran == [("async_job", "other response")]
    assert bgtasks.findings() == []  # run_deferred() raised it in the test


def group_boom() -> None:
    raise ExceptionGroup("from the task", [ValueError("inner")])


@pytest.mark.bgtasks(mode="defer")
def test_a_deferred_task_that_raises_an_exception_group_fails_like_any_other(
    bgtasks: BackgroundTaskCapture,
) -> None:
    # A task group inside the task raises a group of one: it is the task's own exception, not
    # the wrapping of run_deferred()'s own task group.
    post(apps.fastapi_app((group_boom, ())))
    post(apps.fastapi_app((sync_job, ("other response",))))

    with pytest.raises(ExceptionGroup) as error:
        bgtasks.run_deferred()

    failed, other = bgtasks.tasks
    assert error.value is failed.exception
    assert repr(failed.exception) == "ExceptionGroup('from the task', [ValueError('inner')])"
    assert other.status is TaskStatus.RAN
    assert apps.ran == [("sync_job", "other response")]


@pytest.mark.bgtasks(mode="defer")
def test_deferred_tasks_run_with_the_context_they_were_scheduled_in(
    bgtasks: BackgroundTaskCapture,
) -> None:
    user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")
    seen: list[str] = []
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        user.set("alice")
        background_tasks.add_task(lambda: seen.append(user.get()))

        async def in_async() -> None:
            seen.append(user.get())

        background_tasks.add_task(in_async)
        return {}

    post(app)
    assert user.get() == "nobody"
    bgtasks.run_deferred()
    assert seen == ["alice", "alice"]
    assert user.get() == "nobody"


@pytest.mark.bgtasks(mode="defer")
def test_a_task_a_held_task_schedules_runs_with_the_context_that_task_left(
    bgtasks: BackgroundTaskCapture,
) -> None:
    user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="nobody")
    seen: list[tuple[str, str]] = []
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        user.set("alice")

        async def second() -> None:
            seen.append(("second", user.get()))

        async def first() -> None:
            seen.append(("first", user.get()))
            user.set("bob")
            background_tasks.add_task(second)  # after the batch was called: nothing calls it

        background_tasks.add_task(first)
        return {}

    post(app)
    assert len(bgtasks.run_deferred()) == 2
    assert seen == [("first", "alice"), ("second", "bob")]
    assert user.get() == "nobody"


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_inside_bg_client_runs_on_its_live_event_loop(
    bgtasks: BackgroundTaskCapture,
) -> None:
    import asyncio

    loops: list[object] = []
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        loops.append(asyncio.get_running_loop())

        async def where() -> None:
            loops.append(asyncio.get_running_loop())

        background_tasks.add_task(where)
        return {}

    with TestClient(app) as client:
        client.post("/work")
        bgtasks.run_deferred()
    assert loops[0] is loops[1]


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_after_the_loop_stopped_uses_a_new_loop(
    bgtasks: BackgroundTaskCapture,
) -> None:
    async def request() -> None:
        app = apps.fastapi_app((async_job, ("later",)))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.post("/work")

    loop = asyncio.new_event_loop()  # as sync tests that drive a loop by hand do
    try:
        loop.run_until_complete(request())
        # Stopped, not closed: nothing would run what is sent to it.
        assert bgtasks.run_deferred() == bgtasks.tasks
    finally:
        loop.close()
    assert apps.ran == [("async_job", "later")]


@pytest.mark.anyio
@pytest.mark.bgtasks(mode="defer")
async def test_arun_deferred_cancelled_from_outside(bgtasks: BackgroundTaskCapture) -> None:
    started = anyio.Event()

    async def slow() -> None:
        started.set()
        await anyio.sleep_forever()

    app = apps.fastapi_app((slow, ()), (sync_job, ("same response",)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/work")
    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(bgtasks.arun_deferred)
            await started.wait()
            group.cancel_scope.cancel()  # as a timeout around the test's own code would
    assert not scope.cancel_called  # the five seconds did not run out

    running, same = bgtasks.tasks
    assert (running.status, running.reason) == (TaskStatus.CANCELLED, "cancelled while running")
    assert same.status is TaskStatus.CANCELLED


@pytest.mark.anyio
@pytest.mark.bgtasks(mode="defer")
async def test_arun_deferred_runs_a_task_on_its_own_loop_while_that_runs_else_on_the_tests(
    bgtasks: BackgroundTaskCapture,
) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def where() -> None:
        loops.append(asyncio.get_running_loop())

    app = apps.fastapi_app((where, ()))
    with TestClient(app) as client:  # the app runs on the client's loop, in a thread
        client.post("/work")
        with anyio.fail_after(5):
            assert await bgtasks.arun_deferred() == bgtasks.tasks
    post(app)  # a client gone with its loop
    with anyio.fail_after(5):
        assert await bgtasks.arun_deferred() == bgtasks.tasks[1:]

    here = asyncio.get_running_loop()
    on_the_clients, on_the_tests = loops
    assert on_the_clients is not here
    assert on_the_tests is here
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN, TaskStatus.RAN]


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_runs_tasks_held_on_a_trio_run_that_is_over(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = apps.fastapi_app((async_job, ("first",)), (async_job, ("second",)))

    async def request() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.post("/work")

    anyio.run(request, backend="trio")
    first, second = bgtasks.tasks
    assert bgtasks.run_deferred(limit=1) == [first]
    assert bgtasks.run_deferred() == [second]  # on a run already found to be over
    assert apps.ran == [("async_job", "first"), ("async_job", "second")]


@pytest.mark.bgtasks(mode="defer")
def test_run_deferred_arguments_are_checked(bgtasks: BackgroundTaskCapture) -> None:
    with pytest.raises(
        ValueError, match=r"run_deferred\(\) expects limit= to be an int >= 0, got -1\."
    ):
        bgtasks.run_deferred(limit=-1)
    with pytest.raises(
        ValueError,
        match=r"run_deferred\(\) expects timeout= to be a number of seconds > 0, got 0\.",
    ):
        bgtasks.run_deferred(timeout=0)
    with pytest.raises(ValueError, match=r"got nan\.$"):
        bgtasks.run_deferred(timeout=float("nan"))
    with pytest.raises(TypeError, match=r"run_deferred\(\) expects a task function"):
        bgtasks.run_deferred(only=42)  # type: ignore[arg-type]  # the misuse under test
    with pytest.raises(TypeError, match=r"expects limit= to be an int >= 0, got True\.$"):
        bgtasks.run_deferred(limit=True)
    with pytest.raises(
        TypeError, match=r"expects timeout= to be a number of seconds > 0, got True\.$"
    ):
        bgtasks.run_deferred(timeout=True)
    post(apps.fastapi_app((sync_job, ("a",))))
    assert bgtasks.run_deferred(limit=0) == []
    assert len(bgtasks.deferred) == 1


@pytest.mark.anyio
@pytest.mark.bgtasks(mode="defer")
async def test_arun_deferred_in_an_async_test(bgtasks: BackgroundTaskCapture) -> None:
    app = apps.fastapi_app((sync_job, ("a",)), (async_job, ("b",)))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.post("/work")).status_code == 200
    assert apps.ran == []

    with pytest.raises(RuntimeError) as error:
        bgtasks.run_deferred()
    message = (
        "bgtasks.run_deferred() was called from a running event loop; in async tests use "
        "`await bgtasks.arun_deferred()`."
    )
    assert str(error.value) == message
    manual.assert_listed(message)
    assert apps.ran == []  # nothing ran

    with pytest.raises(ValueError, match="limit=") as bad:
        await bgtasks.arun_deferred(limit=-1)
    assert str(bad.value) == "arun_deferred() expects limit= to be an int >= 0, got -1."
    with pytest.raises(ValueError, match=r"^arun_deferred\(\) expects timeout= "):
        await bgtasks.arun_deferred(timeout=0)
    assert await bgtasks.arun_deferred(limit=0) == []

    ran = await bgtasks.arun_deferred(only=async_job)
    assert [record.call for record in ran] == ["async_job('b')"]
    ran = await bgtasks.arun_deferred(limit=1)
    assert [record.call for record in ran] == ["sync_job('a')"]
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN, TaskStatus.RAN]
    assert apps.ran == [("async_job", "b"), ("sync_job", "a")]

    async def slow() -> None:
        await anyio.sleep(5)

    bgtasks.defer(slow)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps.fastapi_app((slow, ()))), base_url="http://t"
    ) as client:
        await client.post("/work")
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 seconds\.$"):
        await bgtasks.arun_deferred(timeout=0.05)


# -- misuse ----------------------------------------------------------------------------------


@pytest.mark.bgtasks(allow_failures=True)
def test_a_sync_callable_returning_a_coroutine_is_reported_as_failed(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(lambda: async_job("never awaited"))  # site:lambda
        return {}

    def post_quietly() -> int:
        # The plugin closes the coroutine it reports, so Python has nothing to warn about when
        # the coroutine is collected: wait for the client's worker threads (anyio 3's keep what
        # their last job returned until they stop) and collect, with warnings recorded.
        before = set(threading.enumerate())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)  # others as the suite says
            status = post(app)
            for thread in set(threading.enumerate()) - before:
                thread.join()
            gc.collect()
        assert [str(w.message) for w in caught] == []
        return status

    assert post_quietly() == 200

    (record,) = bgtasks.failed
    assert record.problem == (
        "<lambda> is a sync callable that returned <coroutine object async_job>, which nobody "
        "awaits: Starlette runs sync tasks in a thread and drops what they return; give "
        "add_task the async function"
    )
    assert isinstance(record.exception, TypeError)
    assert str(record.exception) == record.problem
    assert record.describe().splitlines()[1:] == [f"    {record.problem}"]
    assert apps.ran == []

    # Unless allowed, the test fails at teardown (the marker allows it; the verdict is here).
    listed = f"- <lambda>() [failed] POST /work  ({apps.site('lambda', __file__)})\n    {record.problem}\n"
    assert [finding.message for finding in bgtasks.findings()] == [
        f"1 background task never did its work:\n{listed}"
        "If the test expects this, use @pytest.mark.bgtasks(allow_failures=True).\n"
        "See https://pytest-bgtasks.github.io/pytest-bgtasks/catches/#misuse"
    ]
    assert post_quietly() == 200
    assert [finding.message for finding in bgtasks.findings()] == [
        f"2 background tasks never did their work:\n{listed}{listed}"
        "If the test expects this, use @pytest.mark.bgtasks(allow_failures=True).\n"
        "See https://pytest-bgtasks.github.io/pytest-bgtasks/catches/#misuse"
    ]


def test_a_coroutine_object_given_to_add_task_is_reported_at_the_call_site(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(async_job("x"))  # type: ignore[arg-type]  # the misuse under test
        return {}

    with pytest.raises(TypeError, match="'coroutine' object is not callable"):
        post(app)
    (record,) = bgtasks.tasks
    assert record.problem == (
        "add_task() was given a coroutine object, <coroutine object async_job>: pass the "
        "function and its arguments instead, add_task(func, *args)"
    )
    assert record.status is TaskStatus.FAILED
    assert record.describe().splitlines()[1:] == [
        "    raised: TypeError(\"'coroutine' object is not callable\")",
        f"    {record.problem}",
    ]
    # It can never run: closed at once, so Python has no "never awaited" to warn about later.
    coroutine = record.func
    assert inspect.iscoroutine(coroutine)
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


@pytest.fixture
def early_batch() -> StarletteBackgroundTasks:
    """A batch made before the capture starts (this fixture comes first in the test's list)."""
    return StarletteBackgroundTasks()


@pytest.mark.parametrize("failing", [boom, "rule"], ids=["real", "simulated"])
def test_a_failure_stops_the_rest_of_a_batch_made_before_the_capture(
    early_batch: StarletteBackgroundTasks, bgtasks: BackgroundTaskCapture, failing: object
) -> None:
    import anyio

    if failing == "rule":
        bgtasks.fail(sync_job, ZeroDivisionError("simulated"))
    early_batch.add_task(boom if failing is boom else sync_job, "first")
    early_batch.add_task(async_job, "second")
    if failing is boom:
        with pytest.raises(ZeroDivisionError):
            anyio.run(early_batch)
    else:
        anyio.run(early_batch)

    first, second = bgtasks.tasks
    assert first.status is TaskStatus.FAILED
    assert second.status is TaskStatus.NOT_RUN
    assert apps.ran == []


def test_wait_returns_every_task_at_once_when_background_tasks_ran_within_their_request(
    bgtasks: BackgroundTaskCapture,
) -> None:
    post(apps.fastapi_app((sync_job, ("a",)), (async_job, ("b",))))
    assert bgtasks.wait() == bgtasks.tasks
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN, TaskStatus.RAN]


@pytest.fixture
def early_batches() -> tuple[StarletteBackgroundTasks, StarletteBackgroundTasks]:
    """Two batches made before the capture starts (this fixture comes first in the test's list)."""
    return StarletteBackgroundTasks(), StarletteBackgroundTasks()


def test_a_failure_in_a_batch_that_a_task_of_another_runs_stops_what_follows_in_the_outer_one(
    early_batches: tuple[StarletteBackgroundTasks, StarletteBackgroundTasks],
    bgtasks: BackgroundTaskCapture,
) -> None:
    import anyio

    outer, inner = early_batches
    inner.add_task(boom, "inner")

    async def run_inner() -> None:
        await inner()

    outer.add_task(run_inner)
    outer.add_task(sync_job, "after")
    with pytest.raises(ZeroDivisionError):
        anyio.run(outer)

    failing, running, after = bgtasks.tasks
    assert (failing.call, failing.status) == ("boom('inner')", TaskStatus.FAILED)
    assert running.status is TaskStatus.FAILED
    assert running.exception is failing.exception
    assert (after.status, after.reason) == (
        TaskStatus.NOT_RUN,
        "not run: an earlier task of its response failed, "
        f"{running.call} raised ZeroDivisionError('boom inner')",
    )
    assert apps.ran == []
