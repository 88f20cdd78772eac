"""Celery under the same fixture, records, modes, rules and assertions as BackgroundTasks."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery, chain, chord, group
from celery.exceptions import NotRegistered, Reject
from kombu.exceptions import EncodeError, OperationalError
from starlette.testclient import TestClient

import apps
import celery_apps
import manual
from celery_apps import (
    add,
    boom,
    celery,
    done,
    flaky,
    notify_later,
    retrying,
    send_email,
    total,
    whoami,
)
from pytest_bgtasks import BackgroundTaskCapture, TaskRequest, TaskStatus, task


@pytest.fixture(autouse=True)
def _empty_done() -> Iterator[None]:
    done.clear()
    yield
    done.clear()


def statuses(capture: BackgroundTaskCapture) -> list[tuple[str, TaskStatus]]:
    return [(record.call, record.status) for record in capture.tasks]


# -- capture -----------------------------------------------------------------------------------


def test_every_kind_of_send_is_recorded_as_celery_sends_it(
    bgtasks: BackgroundTaskCapture,
) -> None:
    send_email.delay("a@b.c")  # site:delay
    send_email.apply_async(("b@b.c",), {"subject": "Hi"}, countdown=30, queue="mail", priority=3)
    send_email.s("c@b.c").delay()
    send_email.signature(("d@b.c",)).apply_async(queue="mail")
    chain(add.s(1, 2), add.s(10)).delay()
    group(add.s(1, 1), add.s(2, 2)).delay()
    celery.send_task(send_email.name, ("e@b.c",))

    assert [record.call for record in bgtasks.tasks] == [
        "send_email('a@b.c')",
        "send_email('b@b.c', subject='Hi')",
        "send_email('c@b.c')",
        "send_email('d@b.c')",
        "add(1, 2)",
        "add(3, 10)",  # the next link, sent when the first one succeeded
        "add(1, 1)",
        "add(2, 2)",
        "send_email('e@b.c')",
    ]
    assert {record.source for record in bgtasks.tasks} == {"celery"}
    assert all(record.status is TaskStatus.RAN for record in bgtasks.tasks)
    first, options = bgtasks.tasks[0], bgtasks.tasks[1]
    assert first.func is celery.tasks[send_email.name]
    assert first.name == "celery_apps.send_email"
    assert first.task_id is not None
    assert first.request is None
    assert first.added_at == apps.site("delay", __file__)
    assert first.options == {"serializer": "json"}  # what Celery set itself, not its plumbing
    assert options.options == {
        "countdown": 30,
        "queue": "mail",
        "priority": 3,
        "serializer": "json",
    }
    link = bgtasks.tasks[5]
    assert link.parent is bgtasks.tasks[4]
    assert link.added_at == bgtasks.tasks[4].added_at  # sent by Celery: the chain's line
    bgtasks.assert_task_added(send_email, "a@b.c")
    bgtasks.assert_task_added(send_email, email="b@b.c", subject="Hi")
    bgtasks.assert_task_count(5, send_email)
    bgtasks.assert_tasks_in_order(task(add, 1, 2), task(add, 3, 10))
    bgtasks.assert_task_added("send_email", "e@b.c")


def test_a_chord_runs_its_body_once_its_header_is_done(bgtasks: BackgroundTaskCapture) -> None:
    result = chord([add.s(1, 1), add.s(2, 2)])(total.s())
    calls = [record.call for record in bgtasks.tasks]
    assert calls == ["add(1, 1)", "add(2, 2)", "total([2, 4])"]  # results as JSON gives them
    assert result.get(timeout=1) == 6  # from the in-memory result store: nothing connects


def test_sends_from_an_endpoint_a_dependency_and_a_task_share_one_list(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with TestClient(celery_apps.web_app()) as client:
        response = client.post("/signup/a@b.c")
        client.post("/later/l@b.c")
    assert response.json() == {"sent_before_response": False}  # run after the response
    assert statuses(bgtasks) == [
        ("audit('access')", TaskStatus.RAN),
        ("send_email('dependency@b.c')", TaskStatus.RAN),
        ("audit('signup')", TaskStatus.RAN),
        ("send_email('a@b.c')", TaskStatus.RAN),
        ("Task.delay('l@b.c')", TaskStatus.RAN),
        ("send_email('l@b.c')", TaskStatus.RAN),
    ]
    sources = [record.source for record in bgtasks.tasks]
    assert sources == ["starlette", "celery", "starlette", "celery", "starlette", "celery"]
    endpoint = bgtasks.assert_task_ran(send_email, "a@b.c")
    assert endpoint.request == TaskRequest("POST", "/signup/a@b.c")
    assert endpoint.added_at == apps.site("celery-endpoint", celery_apps.__file__)
    assert bgtasks.tasks[-1].parent is bgtasks.tasks[-2]


def test_a_task_sent_by_a_task_runs_after_it(bgtasks: BackgroundTaskCapture) -> None:
    notify_later.delay("x@b.c")
    assert done == [("notify_later", "x@b.c"), ("send_email", "x@b.c")]
    parent, child = bgtasks.tasks
    assert child.parent is parent
    assert child.kwargs == {"subject": "Later"}


# -- Celery's own execution path ---------------------------------------------------------------


def test_a_task_called_directly_or_applied_runs_here_as_without_the_plugin(
    bgtasks: BackgroundTaskCapture, caplog: pytest.LogCaptureFixture
) -> None:
    assert add(1, y=2) == 3
    assert add.apply((2,), {"y": 3}).get() == 5  # Celery's eager run: traced, never sent
    assert boom.apply(("x",)).state == "FAILURE"
    assert bgtasks.tasks == []
    assert done == [("add", 3), ("add", 5), ("boom", "x")]
    # The plugin's signal receivers pass over the tasks it did not record.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("celery.utils")] == []


def test_a_fake_can_call_the_task_it_replaces(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.replace(add, lambda x, y: add(x, y) * 10)  # a direct call: the real body
    chain(add.s(1, 2), send_email.s()).delay()
    assert [record.call for record in bgtasks.tasks] == ["add(1, 2)", "send_email(30)"]
    assert done == [("add", 3), ("send_email", 30)]


def test_keyword_arguments_reach_the_body_and_the_fake(bgtasks: BackgroundTaskCapture) -> None:
    add.delay(1, y=2)
    bgtasks.replace(send_email, lambda email, subject: done.append(("fake", email, subject)))
    send_email.delay("a@b.c", subject="Hi")
    assert done == [("add", 3), ("fake", "a@b.c", "Hi")]


@pytest.mark.bgtasks(allow_failures=True)  # the failures are the point
def test_a_result_celery_cannot_store_and_a_rejection_fail_the_task_with_their_error(
    bgtasks: BackgroundTaskCapture,
) -> None:
    chain(celery_apps.tasks.as_set.s(1, 2), send_email.s()).delay()
    celery_apps.tasks.rejects.delay("no")
    unstored, rejected = bgtasks.tasks  # the next link was never sent
    assert done == [("as_set", (1, 2)), ("rejects", "no")]  # each body ran
    assert (unstored.status, rejected.status) == (TaskStatus.FAILED, TaskStatus.FAILED)
    assert isinstance(unstored.exception, EncodeError)
    assert str(unstored.exception) == "Object of type set is not JSON serializable"
    assert isinstance(rejected.exception, Reject)
    assert not unstored.simulated
    assert not rejected.simulated


def test_an_app_that_stores_no_results_stores_none_in_the_test_either(
    bgtasks: BackgroundTaskCapture,
) -> None:
    disabled = Celery("disabled", broker=celery_apps.NOWHERE, backend="disabled")
    empty = Celery("empty", broker=celery_apps.NOWHERE)
    empty.conf.result_backend = ""
    for app in (disabled, empty):
        result = celery_apps.make_tasks(app).add.delay(1, 2)
        with pytest.raises(NotImplementedError, match=r"^No result backend is configured\.\n"):
            result.get(timeout=1)
    assert done == [("add", 3), ("add", 3)]


def test_a_send_given_its_own_connection_is_recorded_and_nothing_connects(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with celery.connection_for_write() as connection:  # to nowhere: connecting would fail
        result = send_email.apply_async(("a@b.c",), connection=connection)
    bgtasks.assert_task_ran(send_email, "a@b.c")
    assert result.get(timeout=1) == "a@b.c"


@pytest.mark.bgtasks(allow_failures=True)  # the failure is the point
def test_a_task_that_was_retried_fails_with_the_error_of_its_last_run(
    bgtasks: BackgroundTaskCapture,
) -> None:
    celery_apps.tasks.retried_as_set.delay()
    (record,) = bgtasks.tasks
    assert done == [("retried_as_set", 0), ("retried_as_set", 1)]
    assert (record.status, record.retries) == (TaskStatus.FAILED, 1)
    assert isinstance(record.exception, EncodeError)  # not the first run's Retry


def test_a_bound_task_sees_its_request_as_in_a_worker(bgtasks: BackgroundTaskCapture) -> None:
    result = whoami.delay()
    (record,) = bgtasks.tasks
    assert done == [("whoami", record.task_id)]
    assert result.id == record.task_id


def test_retries_are_counted_and_countdowns_not_waited_for(
    bgtasks: BackgroundTaskCapture,
) -> None:
    started = time.monotonic()
    retrying.delay(2)
    (record,) = bgtasks.tasks
    assert (record.status, record.retries) == (TaskStatus.RAN, 2)
    assert record.exception is None  # the retries' Retry is not kept: the last run raised nothing
    assert done == [("retrying", 0), ("retrying", 1), ("retrying", 2)]
    assert time.monotonic() - started < 30  # the 60-second countdowns were not waited for


@pytest.mark.bgtasks(allow_failures=True)  # the failure is the point
def test_max_retries_exceeded_fails_the_task(bgtasks: BackgroundTaskCapture) -> None:
    retrying.delay(5)
    (record,) = bgtasks.tasks
    assert (record.status, record.retries) == (TaskStatus.FAILED, 2)
    assert type(record.exception).__name__ == "MaxRetriesExceededError"
    assert [finding.kind for finding in bgtasks.findings()] == ["hidden_failure"]


def test_a_simulated_failure_goes_through_autoretry(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.fail(flaky, ConnectionError("broker down"), times=2)
    flaky.delay("x")
    (record,) = bgtasks.tasks
    assert (record.status, record.retries) == (TaskStatus.RAN, 2)
    assert done == [("flaky", "x")]  # the third attempt ran the body


def test_a_chain_stops_at_a_failing_link(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.fail(boom)
    chain(boom.s("first"), send_email.s()).delay()
    (record,) = bgtasks.tasks  # the next link was never sent
    assert record.status is TaskStatus.FAILED
    assert record.simulated
    assert bgtasks.findings() == []


def test_replace_runs_the_fake_in_the_body_and_passes_its_result_on(
    bgtasks: BackgroundTaskCapture,
) -> None:
    bgtasks.replace(add, lambda x, y: x * y)
    chain(add.s(3, 4), send_email.s()).delay()
    assert [record.call for record in bgtasks.tasks] == ["add(3, 4)", "send_email(12)"]
    assert ("add", 7) not in done


def test_an_app_that_runs_its_tasks_eagerly_is_captured_and_set_back_after(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        from celery import Celery

        app = Celery("eager", broker="redis://127.0.0.1:9/0")
        app.conf.task_always_eager = True
        plain = Celery("plain", broker="redis://127.0.0.1:9/0")


        @app.task(shared=False)
        def add(x, y):
            return x + y


        def test_captured(bgtasks):
            add.delay(1, 2)  # sent (to nowhere), so recorded, and run here
            bgtasks.assert_task_ran(add, 1, 2)
            assert app.conf.task_always_eager is False
            assert plain.conf.task_always_eager is False


        def test_after():
            assert app.conf.task_always_eager is True
            assert plain.conf.task_always_eager is False


        test_captured_again = test_captured
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)


# -- modes -------------------------------------------------------------------------------------


@pytest.mark.bgtasks(mode="defer")
def test_defer_holds_sends_until_run_deferred(bgtasks: BackgroundTaskCapture) -> None:
    with TestClient(celery_apps.web_app()) as client:
        client.post("/signup/a@b.c")
        assert [record.status for record in bgtasks.tasks] == [TaskStatus.DEFERRED] * 4
        assert done == []
        ran = bgtasks.run_deferred(only=send_email)
    assert [record.call for record in ran] == [
        "send_email('dependency@b.c')",
        "send_email('a@b.c')",
    ]
    assert done == [("send_email", "dependency@b.c"), ("send_email", "a@b.c")]
    bgtasks.run_deferred()
    assert {record.status for record in bgtasks.tasks} == {TaskStatus.RAN}


def test_a_task_held_by_a_rule_runs_with_what_it_sends_when_run_deferred_runs_it(
    bgtasks: BackgroundTaskCapture,
) -> None:
    bgtasks.defer(notify_later)
    notify_later.delay("x@b.c")
    assert done == []
    ran = bgtasks.run_deferred()
    assert [record.call for record in ran] == ["notify_later('x@b.c')"]  # what it sent ran after it
    assert done == [("notify_later", "x@b.c"), ("send_email", "x@b.c")]
    assert statuses(bgtasks) == [
        ("notify_later('x@b.c')", TaskStatus.RAN),
        ("send_email('x@b.c', subject='Later')", TaskStatus.RAN),
    ]


def test_a_chain_s_next_link_is_shown_at_the_chain_s_line_when_run_deferred_ran_the_first(
    bgtasks: BackgroundTaskCapture,
) -> None:
    bgtasks.defer(add)
    chain(add.s(1, 2), send_email.s()).delay()  # site:held-chain
    bgtasks.run_deferred()
    first, link = bgtasks.tasks
    assert (link.call, link.status) == ("send_email(3)", TaskStatus.RAN)
    assert link.added_at == first.added_at == apps.site("held-chain", __file__)


@pytest.mark.bgtasks(mode="defer")
def test_a_skip_rule_added_after_a_send_was_held_skips_it_when_run_deferred_reaches_it(
    bgtasks: BackgroundTaskCapture,
) -> None:
    send_email.delay("a@b.c")
    bgtasks.skip(send_email)
    assert [record.call for record in bgtasks.run_deferred()] == ["send_email('a@b.c')"]
    assert statuses(bgtasks) == [("send_email('a@b.c')", TaskStatus.SKIPPED)]
    assert done == []


@pytest.mark.bgtasks(mode="defer")
def test_a_simulated_failure_of_a_held_send_goes_through_autoretry_when_run_deferred_runs_it(
    bgtasks: BackgroundTaskCapture,
) -> None:
    bgtasks.fail(flaky, ConnectionError("broker down"), times=1)
    flaky.delay("x")
    bgtasks.run_deferred()
    (record,) = bgtasks.tasks
    assert (record.status, record.retries) == (TaskStatus.RAN, 1)
    assert done == [("flaky", "x")]  # the retry ran the body


@pytest.mark.bgtasks(mode="skip")
def test_skip_records_and_never_runs(bgtasks: BackgroundTaskCapture) -> None:
    result = send_email.delay("a@b.c")
    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.SKIPPED
    assert result.id == record.task_id
    assert done == []


def test_rules_pick_sends_out_by_their_arguments(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.skip(task(send_email, "skip@b.c"))
    bgtasks.defer(task(send_email, "later@b.c"))
    for email in ("skip@b.c", "later@b.c", "now@b.c"):
        send_email.delay(email)
    assert [record.status for record in bgtasks.tasks] == [
        TaskStatus.SKIPPED,
        TaskStatus.DEFERRED,
        TaskStatus.RAN,
    ]


# -- what production would reject, at the send -------------------------------------------------


class Model:
    """Like a Pydantic model: something JSON cannot encode."""


@pytest.mark.parametrize("mode", ["run", "defer", "skip"])
def test_an_argument_the_serializer_cannot_encode_raises_at_the_send(
    bgtasks: BackgroundTaskCapture, mode: Any
) -> None:
    bgtasks.mode = mode
    with pytest.raises(EncodeError, match="not JSON serializable"):
        send_email.delay(Model())
    assert bgtasks.tasks == []


@pytest.mark.bgtasks(allow_failures=True)  # the test checks the findings itself
def test_a_name_no_app_registers_and_arguments_that_do_not_bind_are_reported(
    bgtasks: BackgroundTaskCapture,
) -> None:
    strict = Celery("strict", broker=celery_apps.NOWHERE, autofinalize=False)
    celery.send_task("celery_apps.mail.nobody", ("a@b.c",))
    celery.send_task(send_email.name, ("a@b.c",), {"to": "x"})
    unknown, unbound = bgtasks.tasks
    assert unknown.status is unbound.status is TaskStatus.FAILED
    assert (unknown.name, unknown.call) == ("celery_apps.mail.nobody", "nobody('a@b.c')")
    assert unknown.problem == (
        "send_task('celery_apps.mail.nobody'): no Celery app in this process registers a task of "
        "that name; a worker would drop it"
    )
    # What the record says it raised: the problem, as the error a worker would give.
    assert (type(unknown.exception), str(unknown.exception)) == (LookupError, unknown.problem)
    assert (type(unbound.exception), str(unbound.exception)) == (LookupError, unbound.problem)
    with pytest.raises(LookupError) as called:
        unknown.func("a@b.c")  # a record's func: there is none to call
    assert str(called.value) == "no Celery app registers a task named 'celery_apps.mail.nobody'"
    assert not strict.finalized  # looked in, but an app that finalizes when told is not told
    assert unbound.problem == (
        "the arguments do not fit celery_apps.send_email: got an unexpected keyword argument 'to'; "
        "the task would fail in the worker"
    )
    (finding,) = bgtasks.findings()
    assert finding.kind == "did_nothing"
    assert done == []
    manual.assert_listed(unknown.problem)
    manual.assert_listed(unbound.problem)


def test_send_task_finds_a_task_of_an_app_not_yet_finalized(
    bgtasks: BackgroundTaskCapture,
) -> None:
    lazy = celery_apps.make_app("lazy", celery_apps.NOWHERE)
    lazy.task(name="lazy.add", shared=False)(celery_apps.tasks.add.run)  # registered lazily
    assert not lazy.finalized
    lazy.send_task("lazy.add", (2, 3))
    assert (bgtasks.tasks[0].call, bgtasks.tasks[0].status) == ("add(2, 3)", TaskStatus.RAN)
    assert done == [("add", 5)]
    assert lazy.finalized


@pytest.mark.bgtasks(allow_failures=True)  # the failure is the point
def test_a_task_only_another_app_registers_fails_as_unknown_to_the_sending_app(
    bgtasks: BackgroundTaskCapture,
) -> None:
    other = celery_apps.make_app("other", celery_apps.NOWHERE)
    other.task(name="other.add", shared=False)(celery_apps.tasks.add.run)
    celery.send_task("other.add", (2, 3))
    (unknown,) = bgtasks.tasks
    assert (unknown.call, unknown.status, unknown.problem) == ("add(2, 3)", TaskStatus.FAILED, None)
    assert isinstance(unknown.exception, NotRegistered)


def test_arguments_that_do_not_bind_raise_at_delay_as_celery_checks_them(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with pytest.raises(TypeError):
        send_email.delay("a@b.c", "Hi", "extra")
    assert bgtasks.tasks == []


# -- the worker mode ---------------------------------------------------------------------------


def test_wait_returns_at_once_when_nothing_runs_and_checks_its_timeout(
    bgtasks: BackgroundTaskCapture,
) -> None:
    send_email.delay("a@b.c")  # run here: done before wait() is called
    started = time.monotonic()
    assert bgtasks.wait(timeout=20) == bgtasks.tasks
    assert time.monotonic() - started < 10  # not at the timeout
    for timeout, error in ((0, ValueError), ("1", TypeError), (None, TypeError)):
        with pytest.raises(error) as raised:
            bgtasks.wait(timeout=timeout)
        assert str(raised.value) == (
            f"bgtasks.wait() expects timeout= to be a number of seconds > 0, got {timeout!r}."
        )


@pytest.fixture(scope="session")
def on_a_real_broker(bgtasks_redis_url: str) -> Any:
    """The tasks, on an app of their own on the session's server."""
    return celery_apps.make_tasks(celery_apps.make_app("bgworker", bgtasks_redis_url))


@pytest.mark.slow  # a Redis-protocol server
@pytest.mark.bgtasks(mode="worker")
def test_a_real_worker_runs_what_is_sent(
    on_a_real_broker: Any, bgtasks: BackgroundTaskCapture
) -> None:
    tasks = on_a_real_broker
    result = tasks.send_email.delay("a@b.c")
    tasks.retrying.delay(2)
    bgtasks.fail(task(tasks.send_email, "down@b.c"), ConnectionRefusedError("smtp down"))
    tasks.send_email.delay("down@b.c")
    records = bgtasks.wait(timeout=10)
    assert result.get(timeout=10) == "a@b.c"
    store = redis.Redis.from_url(tasks.app.conf.result_backend)  # the real one, as in production
    assert store.get(f"celery-task-meta-{result.id}") is not None
    store.close()
    assert [(record.status, record.retries) for record in records] == [
        (TaskStatus.RAN, 0),
        (TaskStatus.RAN, 2),
        (TaskStatus.FAILED, 0),
    ]
    assert records[2].simulated
    assert isinstance(records[2].exception, ConnectionRefusedError)
    assert ("send_email", "a@b.c") in done


@pytest.mark.slow  # a Redis-protocol server
def test_a_task_run_here_sees_the_request_a_real_worker_gives_it(
    on_a_real_broker: Any, bgtasks: BackgroundTaskCapture
) -> None:
    for mode in ("worker", "run"):
        bgtasks.mode = mode
        on_a_real_broker.request_seen.apply_async(priority=3)
        bgtasks.wait(timeout=10)
    in_the_worker, here = (seen for name, seen in done if name == "request_seen")
    assert in_the_worker["delivery_info"]["priority"] == 3
    assert in_the_worker["correlation id is id"]
    assert here == in_the_worker


@pytest.mark.slow  # a Redis-protocol server
@pytest.mark.bgtasks(mode="worker")
def test_the_worker_mode_publishes_a_held_task_when_run_deferred_runs_it(
    on_a_real_broker: Any, bgtasks: BackgroundTaskCapture
) -> None:
    tasks = on_a_real_broker
    bgtasks.defer(tasks.send_email)
    bgtasks.skip(tasks.add)
    held = tasks.send_email.apply_async(("held@b.c",), countdown=60, queue="celery")
    tasks.add.delay(1, 2)
    assert bgtasks.wait(timeout=10) == bgtasks.tasks
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.DEFERRED, TaskStatus.SKIPPED]
    assert done == []
    (record,) = bgtasks.run_deferred()
    bgtasks.wait(timeout=10)
    assert record.status is TaskStatus.RAN
    assert record.options["countdown"] == 60  # kept in the record; the worker runs it now
    assert held.get(timeout=10) == "held@b.c"
    assert done == [("send_email", "held@b.c")]


@pytest.mark.slow  # a Redis-protocol server
@pytest.mark.bgtasks(mode="worker", allow_failures=True)  # the failure is the point
def test_in_the_worker_mode_a_held_task_run_deferred_runs_is_running_until_the_worker_says(
    on_a_real_broker: Any, bgtasks: BackgroundTaskCapture
) -> None:
    tasks = on_a_real_broker
    bgtasks.defer(tasks.boom)
    tasks.boom.delay("late")
    (record,) = bgtasks.run_deferred()
    assert bgtasks.wait(timeout=10) == [record]
    assert record.status is TaskStatus.FAILED
    assert isinstance(record.exception, ZeroDivisionError)


@pytest.mark.slow  # a Redis-protocol server
@pytest.mark.bgtasks(mode="worker")
def test_in_the_worker_mode_every_task_runs_at_once_on_the_in_process_worker(
    on_a_real_broker: Any, bgtasks: BackgroundTaskCapture
) -> None:
    tasks = on_a_real_broker
    tasks.thread.apply_async(eta=datetime.now(timezone.utc) + timedelta(minutes=1))
    bgtasks.wait(timeout=10)  # the eta is kept in the record, not waited for
    bgtasks.defer(tasks.thread)
    held = tasks.thread.delay()
    bgtasks.run_deferred()
    bgtasks.wait(timeout=10)
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN, TaskStatus.RAN]
    sent, held = (ident for name, ident in done if name == "thread")
    assert sent == held != threading.get_ident()  # the worker's thread, not the test's
    (node,) = (name for reply in tasks.app.control.ping(timeout=0.5) for name in reply)
    assert re.fullmatch(r"bgtasks-[0-9a-f]{8}@localhost", node)  # its own name, not the host's


@pytest.mark.slow  # a Redis-protocol server
def test_the_worker_is_a_daemon_thread_named_for_what_it_is_and_is_gone_when_the_capture_ends(
    bgtasks_redis_url: str,
) -> None:
    app = celery_apps.make_app("bgthread", bgtasks_redis_url)
    seen: list[threading.Thread] = []

    @app.task(shared=False)
    def where() -> None:
        seen.append(threading.current_thread())

    for _ in range(2):  # the second capture's worker, started after the first one stopped, runs
        with BackgroundTaskCapture(mode="worker") as capture:
            where.delay()
            assert [record.status for record in capture.wait(timeout=10)] == [TaskStatus.RAN]
    first, second = seen
    assert first is not second
    for thread in seen:
        assert (thread.name, thread.daemon) == ("bgtasks-celery-worker", True)
        assert not thread.is_alive()


@pytest.mark.slow  # a Redis-protocol server
def test_the_worker_neither_announces_itself_nor_listens_to_workers_and_reserves_four_tasks(
    bgtasks_redis_url: str,
) -> None:
    url = urlsplit(bgtasks_redis_url)._replace(path="/7").geturl()  # a database of its own
    tasks = celery_apps.make_tasks(celery_apps.make_app("bgquiet", url))
    server = redis.Redis.from_url(url)
    broadcasts = server.pubsub()
    broadcasts.psubscribe("/7.*")  # kombu's broadcasts there: events, gossip, mingle's hello
    with BackgroundTaskCapture(mode="worker") as capture:
        tasks.add.delay(1, 2)
        capture.wait(timeout=10)
        heard = []
        while (message := broadcasts.get_message(timeout=0.1)) is not None:
            heard.append((message["type"], message["channel"]))
        listens = server.exists("_kombu.binding.celeryev")  # gossip's queue on the events
        (stats,) = tasks.app.control.inspect(timeout=10, limit=1).stats().values()
    broadcasts.close()
    server.close()
    assert heard == [("psubscribe", b"/7.*")]  # no heartbeat, no mingling
    assert not listens
    assert stats["prefetch_count"] == 4  # one task at a time, times Celery's multiplier of 4


@pytest.mark.slow  # a Redis-protocol server
def test_stopping_the_worker_wakes_the_read_it_waits_in_and_leaves_the_tests_own_reads_alone(
    bgtasks_redis_url: str, on_a_real_broker: Any
) -> None:
    server = redis.Redis.from_url(bgtasks_redis_url)
    key = f"bgtasks-test-{uuid.uuid4().hex}"
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(server.blpop([key], timeout=30)))
    with BackgroundTaskCapture(mode="worker") as capture:
        on_a_real_broker.add.delay(1, 2)
        capture.wait(timeout=10)
        reader.start()  # the test's own blocking read, on another connection
        while not [each for each in server.client_list() if each["cmd"] == "blpop"]:
            reader.join(0.01)
        before = server.info("commandstats")
    after = server.info("commandstats")
    server.lpush(key, "mine")
    reader.join(30)
    server.close()

    def calls(command: str) -> int:
        stat = f"cmdstat_{command}"
        return int(after.get(stat, {}).get("calls", 0)) - int(before.get(stat, {}).get("calls", 0))

    assert calls("client|unblock") >= 1  # the worker's BRPOP returns now, not at its timeout
    assert calls("client|list") < 50  # each look for a read to wake is one; none once it is gone
    assert got == [(key.encode(), b"mine")]  # still waiting, after the worker stopped


@pytest.mark.slow  # a Redis-protocol server
def test_the_worker_mode_leaves_celerys_join_guard_as_the_test_set_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from celery.result import denied_join_result

        import celery_apps


        @pytest.mark.bgtasks(mode="worker")
        def test_denied(bgtasks, bgtasks_redis_url):
            app = celery_apps.make_app("guarded", bgtasks_redis_url)
            tasks = celery_apps.make_tasks(app)
            with denied_join_result():
                result = tasks.add.delay(1, 2)  # the worker starts here
                bgtasks.wait(timeout=10)
                with pytest.raises(RuntimeError, match="Never call result.get"):
                    result.get(timeout=10)
            assert result.get(timeout=10) == 3


        def test_after(bgtasks):
            assert celery_apps.add.delay(2, 3).get(timeout=1) == 5
        """
    )
    pytester.syspathinsert(Path(__file__).parent)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


@pytest.mark.slow  # a Redis-protocol server
@pytest.mark.bgtasks(mode="worker", allow_failures=True)  # the test checks the refusal itself
def test_in_the_worker_mode_a_send_refused_at_the_send_is_never_published(
    on_a_real_broker: Any, bgtasks: BackgroundTaskCapture
) -> None:
    tasks = on_a_real_broker
    tasks.app.send_task("celery_apps.mail.nobody")
    tasks.send_email.delay("a@b.c")  # the worker takes messages in order: this one comes after
    bgtasks.wait(timeout=10)
    refused, sent = bgtasks.tasks
    assert refused.problem == (
        "send_task('celery_apps.mail.nobody'): no Celery app in this process registers a task of "
        "that name; a worker would drop it"
    )
    assert (refused.status, sent.status) == (TaskStatus.FAILED, TaskStatus.RAN)


@pytest.mark.slow  # waits for a worker that cannot start
@pytest.mark.bgtasks(mode="worker")
def test_a_worker_whose_broker_is_down_is_reported_at_the_send(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = Celery("down", broker=celery_apps.NOWHERE)  # no result store: only the worker fails
    app.conf.broker_connection_retry_on_startup = False
    tasks = celery_apps.make_tasks(app)
    with pytest.raises(OperationalError) as raised:  # kombu's, for the TimeoutError raised
        tasks.send_email.delay("a@b.c")
    assert str(raised.value) == (
        "The Celery worker of 'down' did not become ready: is its broker "
        "(redis://127.0.0.1:9/0) running? In tests, point the app's broker at the "
        "bgtasks_redis_url fixture."
    )
    manual.assert_listed(str(raised.value))


@pytest.mark.slow  # a Redis-protocol server
@pytest.mark.bgtasks(mode="worker", allow_failures=True)  # the test checks the refusal itself
def test_in_the_worker_mode_a_task_only_another_app_registers_is_refused_when_the_worker_drops_it(
    on_a_real_broker: Any, bgtasks: BackgroundTaskCapture
) -> None:
    tasks = on_a_real_broker
    other = celery_apps.make_app("other-worker", celery_apps.NOWHERE)
    other.task(name="other.add", shared=False)(celery_apps.tasks.add.run)
    tasks.app.send_task("other.add", (2, 3))
    tasks.send_email.delay("a@b.c")  # the worker takes messages in order: this one comes after
    bgtasks.wait(timeout=10)
    unknown, sent = bgtasks.tasks
    assert (unknown.status, sent.status) == (TaskStatus.FAILED, TaskStatus.RAN)
    assert unknown.problem == (
        "the worker does not know a task named 'other.add': it dropped the message"
    )
    assert done == [("send_email", "a@b.c")]


@pytest.mark.slow  # a Redis-protocol server
@pytest.mark.parametrize("mode", ["run", "worker"])
def test_the_same_test_in_the_run_and_the_worker_mode(
    on_a_real_broker: Any, bgtasks: BackgroundTaskCapture, mode: Any
) -> None:
    bgtasks.mode = mode
    with TestClient(celery_apps.web_app(on_a_real_broker)) as client:
        client.post("/signup/a@b.c")
    bgtasks.wait(timeout=10)
    bgtasks.assert_task_ran(on_a_real_broker.send_email, "a@b.c")
    bgtasks.assert_task_ran(celery_apps.audit, "signup")


@pytest.mark.slow  # a Redis-protocol server
def test_wait_gives_up_and_names_what_is_still_running(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import threading

        import pytest
        from celery import Celery


        @pytest.fixture
        def slow(bgtasks_redis_url):
            app = Celery("slow", broker=bgtasks_redis_url, backend=bgtasks_redis_url)
            app.conf.broker_connection_retry_on_startup = True
            started, release = threading.Event(), threading.Event()

            @app.task(shared=False)
            def slow():
                started.set()
                release.wait(10)

            slow.delay()  # site:slow
            assert started.wait(10)
            # Left running at teardown: the worker then stops.
            threading.Timer(0.5, release.set).start()
            return slow


        @pytest.mark.bgtasks(mode="worker")
        def test_gives_up(bgtasks, slow):
            bgtasks.wait(timeout=0.2)


        @pytest.mark.bgtasks(mode="worker", assert_all_run=True)
        def test_left_running(bgtasks, slow):
            with pytest.raises(TimeoutError):
                bgtasks.wait(timeout=0.2)


        def test_unencodable(bgtasks):
            from celery_apps import send_email

            send_email.delay(object())


        def test_called_directly(bgtasks):
            from celery_apps import boom

            boom("x")


        def test_applied(bgtasks):
            from celery_apps import boom

            boom.apply(("x",), throw=True)


        stopping = Celery("stopping", broker="redis://127.0.0.1:9/0")


        @stopping.task(shared=False)
        def stops():
            pytest.fail("stopped in the task")  # not an Exception: Celery lets it through


        def test_stopped_at_the_send(bgtasks):
            stops.delay()


        def test_stopped_when_run_deferred(bgtasks):
            bgtasks.defer(stops)
            stops.delay()
            bgtasks.run_deferred()
        """
    )
    pytester.syspathinsert(Path(__file__).parent)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=6, errors=1)
    site = "test_wait_gives_up_and_names_what_is_still_running.py:18"
    lines = result.stdout.lines
    gave_up = lines.index(
        "E       TimeoutError: bgtasks.wait() gave up after 0.2 seconds: 1 background task was "
        "still running:"
    )
    assert lines[gave_up + 1] == f"E       - slow() [pending]  ({site})"
    unfinished = lines.index("1 background task was still running when the test ended:")
    assert lines[unfinished + 1 : unfinished + 3] == [
        f"- slow() [pending]  ({site})",
        "Wait for it with bgtasks.wait(), or drop assert_all_run=True.",
    ]
    # The plugin's frames are hidden: each traceback goes from the test to Celery's code (and
    # on to the task's, for a direct call, one applied, or a task that stops the test). The
    # reports end where the warnings summary starts: under coverage it names the plugin,
    # imported before pytest could rewrite it.
    reports = re.split(r"=+ (?:warnings summary|short test summary info) =+", result.stdout.str())
    assert "pytest_bgtasks" not in reports[0]


# -- laziness --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_session_that_never_imports_celery_captures_without_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import sys

        from fastapi import BackgroundTasks, FastAPI
        from starlette.testclient import TestClient


        def job():
            pass


        def test_it(bgtasks):
            app = FastAPI()

            @app.post("/work")
            def work(background_tasks: BackgroundTasks):
                background_tasks.add_task(job)
                return {}

            with TestClient(app) as client:
                client.post("/work")
            bgtasks.assert_task_ran(job)
            assert not [name for name in sys.modules if name.startswith(("celery", "kombu"))]
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
