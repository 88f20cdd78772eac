"""Celery: what the source does beyond the common paths (test_celery.py has those)."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import group

import celery_apps
import manual
from celery_apps import add, done, send_email
from pytest_bgtasks import BackgroundTaskCapture, TaskStatus


@pytest.fixture(autouse=True)
def _empty_done() -> Iterator[None]:
    done.clear()
    yield
    done.clear()


def test_a_task_that_calls_itself_directly_sees_each_call_s_own_request(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = celery_apps.make_app("direct", celery_apps.NOWHERE)

    @app.task(shared=False, bind=True)
    def countdown(self: Any, n: int) -> None:
        done.append(list(self.request.args))
        if n:
            countdown(n - 1)  # a direct call, as without the plugin: a request of its own

    countdown(2)
    countdown.delay(1)
    assert done == [[2], [1], [0], [1], [0]]
    assert [record.call for record in bgtasks.tasks] == ["countdown(1)"]


def test_in_a_capture_an_app_s_result_store_is_one_in_memory_outside_the_worker_mode() -> None:
    app = celery_apps.make_app("stores", celery_apps.NOWHERE)
    own = type(app.backend)
    with BackgroundTaskCapture():
        memory = app.backend
        assert type(memory).__name__ == "CacheBackend"
        assert app.backend is memory  # the same store every time, as Celery keeps its own
    assert type(app.backend) is own  # the app's own again, outside any capture
    with BackgroundTaskCapture(mode="worker"):
        assert type(app.backend) is own  # the worker mode's results go where the app says


def test_a_thousand_tasks_sent_by_one_task_all_run_after_it_in_order(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = celery_apps.make_app("fan", celery_apps.NOWHERE)
    tasks = celery_apps.make_tasks(app)

    @app.task(shared=False)
    def fan_out(n: int) -> None:
        for x in range(n):
            tasks.add.delay(x, 0)

    fan_out.delay(1000)
    assert done == [("add", x) for x in range(1000)]
    assert {record.status for record in bgtasks.tasks} == {TaskStatus.RAN}


def test_an_option_set_to_false_is_left_out_of_the_record_and_one_set_to_true_is_shown(
    bgtasks: BackgroundTaskCapture,
) -> None:
    send_email.apply_async(("a@b.c",), ignore_result=True, retry=False)
    (record,) = bgtasks.tasks
    assert record.options == {"serializer": "json", "ignore_result": True}


def test_a_task_sent_again_with_the_id_of_one_sent_before_runs_again_as_the_same_record(
    bgtasks: BackgroundTaskCapture,
) -> None:
    first = add.apply_async((1, 2), task_id="same-id")
    again = add.apply_async((1, 2), task_id="same-id")
    (record,) = bgtasks.tasks
    assert (record.status, record.retries) == (TaskStatus.RAN, 0)  # not a retry
    assert first.id == again.id == record.task_id == "same-id"
    assert done == [("add", 3), ("add", 3)]


@pytest.mark.slow  # a Redis-protocol server
def test_a_held_task_is_published_to_the_broker_the_app_names_when_run_deferred_runs_it(
    bgtasks: BackgroundTaskCapture, bgtasks_redis_url: str
) -> None:
    app = celery_apps.make_app("moved", celery_apps.NOWHERE)
    tasks = celery_apps.make_tasks(app)
    group(tasks.add.s(1, 1), tasks.add.s(2, 2)).delay()  # Celery's pool now names NOWHERE
    app.conf.broker_url = app.conf.result_backend = bgtasks_redis_url  # a fixture moves it
    bgtasks.mode = "worker"
    bgtasks.defer(tasks.send_email)
    tasks.send_email.delay("held@b.c")
    bgtasks.run_deferred()
    bgtasks.wait(timeout=10)
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN] * 3
    assert done == [("add", 2), ("add", 4), ("send_email", "held@b.c")]


@pytest.mark.bgtasks(mode="defer")
def test_tasks_held_outside_any_event_loop_run_on_asyncio(bgtasks: BackgroundTaskCapture) -> None:
    import sniffio

    seen: list[str] = []
    app = celery_apps.make_app("where", celery_apps.NOWHERE)

    @app.task(shared=False)
    def where() -> None:
        seen.append(sniffio.current_async_library())

    where.delay()  # held here, where no event loop runs (trio is imported: hypothesis does)
    assert bgtasks.run_deferred() == bgtasks.tasks
    assert seen == ["asyncio"]


def test_a_send_in_task_protocol_1_is_refused_with_what_to_change(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = celery_apps.make_app("legacy", celery_apps.NOWHERE)
    app.conf.task_protocol = 1  # its messages carry the task's id where no recorder looks
    legacy_add = celery_apps.make_tasks(app).add
    for send in (lambda: legacy_add.delay(1, 2), lambda: app.send_task(legacy_add.name, (1, 2))):
        with pytest.raises(ValueError, match="task_protocol = 1") as error:
            send()
        assert str(error.value) == (
            f"{legacy_add.name!r} was sent with task_protocol = 1, which the Celery app 'legacy' "
            "sets: pytest-bgtasks reads the task messages of protocol 2 (Celery's default since "
            "4.0) and would neither record nor run it. Leave task_protocol unset in tests."
        )
        manual.assert_listed(str(error.value))
    assert bgtasks.tasks == []
    assert done == []


class Interrupted(BaseException):
    """Not an Exception: what Celery's tracer lets through (KeyboardInterrupt, pytest.fail)."""


@pytest.mark.parametrize(
    "mode", ["run", pytest.param("defer", marks=pytest.mark.bgtasks(mode="defer"))]
)
def test_a_task_that_raises_what_celery_lets_through_fails_and_the_error_goes_on_up(
    bgtasks: BackgroundTaskCapture, mode: str
) -> None:
    app = celery_apps.make_app("interrupted", celery_apps.NOWHERE)

    @app.task(shared=False)
    def interrupted() -> None:
        raise Interrupted("stop")

    with pytest.raises(Interrupted):  # noqa: PT012  # in the run mode, the send raises
        interrupted.delay()
        assert mode == "defer"
        bgtasks.run_deferred()
    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.FAILED
    assert isinstance(record.exception, Interrupted)
    assert bgtasks.assert_task_failed(interrupted) is record


@pytest.mark.bgtasks(allow_failures=True)  # a finding at teardown, as production would drop it
def test_a_message_in_a_content_type_the_app_does_not_accept_is_refused_with_its_arguments(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = celery_apps.make_app("picky", celery_apps.NOWHERE)
    app.conf.task_serializer = "pickle"  # sent in pickle...
    app.conf.accept_content = ["json"]  # ...which its worker refuses
    picky_add = celery_apps.make_tasks(app).add
    picky_add.delay(1, y=2)
    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.FAILED
    assert (record.args, record.kwargs) == ((1,), {"y": 2})  # as sent
    assert record.problem == (
        f"a worker would refuse the message of {picky_add.name}: Refusing to deserialize "
        "untrusted content of type pickle (application/x-python-serialize)"
    )
    manual.assert_listed(record.problem)
    assert done == []  # not run
    bgtasks.assert_task_failed(picky_add, 1, y=2)


@pytest.mark.slow  # a Redis-protocol server
@pytest.mark.bgtasks(mode="worker")
def test_wait_waits_for_a_task_that_ends_within_its_timeout(
    bgtasks: BackgroundTaskCapture, bgtasks_redis_url: str
) -> None:
    app = celery_apps.make_app("late", bgtasks_redis_url)
    started, release = threading.Event(), threading.Event()

    @app.task(shared=False)
    def late() -> None:
        started.set()
        release.wait(10)

    late.delay()
    assert started.wait(10)
    timer = threading.Timer(1.3, release.set)  # ends 0.7 s before wait() would give up
    timer.start()
    try:
        (record,) = bgtasks.wait(timeout=2)
    finally:
        release.set()
        timer.cancel()
    assert record.status is TaskStatus.RAN


def test_wait_gives_up_after_ten_seconds_unless_told_otherwise() -> None:
    timeout = inspect.signature(BackgroundTaskCapture.wait).parameters["timeout"]
    assert timeout.default == 10.0  # as documented
