"""User code, type-checked and never run: what mypy --strict and pyright (strict) make of a
test suite that uses the fixtures, records and helpers. `.ci/run` checks this file with both;
a change to the public types that would break users' type checking fails there. The name does
not start with `test_`, so pytest does not collect it.

The last function holds mistakes each checker must report: each line carries an ignore
comment, and both checkers fail on an ignore comment that silences nothing.
"""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Literal

import pytest
from starlette.testclient import TestClient

import pytest_bgtasks
from pytest_bgtasks import (
    BackgroundTaskCapture,
    CallSite,
    ExpectedTask,
    Finding,
    SimulatedTaskError,
    TaskLog,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    assert_no_tasks,
    assert_task_added,
    assert_task_count,
    assert_task_failed,
    assert_task_not_added,
    assert_task_ran,
    assert_tasks_in_order,
    task,
)

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type


def send_welcome_email(email: str, subject: str = "Welcome") -> None: ...


async def audit(event: str, **details: object) -> None: ...


def test_records(bg_client: TestClient, bgtasks: BackgroundTaskCapture) -> None:
    bg_client.post("/signup", json={"email": "a@b.com"})
    record = assert_task_added(send_welcome_email, "a@b.com")
    assert_type(record, TaskRecord)
    assert_type(record.func, Callable[..., Any])
    assert_type(record.args, tuple[Any, ...])
    assert_type(record.kwargs, dict[str, Any])
    assert_type(record.name, str)
    assert_type(record.status, TaskStatus)
    assert_type(record.exception, BaseException | None)
    assert_type(record.request, TaskRequest | None)
    assert_type(record.added_at, str | None)
    assert_type(record.index, int)
    assert_type(record.reason, str | None)
    assert_type(record.simulated, bool)
    assert_type(record.problem, str | None)
    assert_type(record.call, str)
    assert_type(record.source, str)
    assert_type(record.parent, TaskRecord | None)
    assert_type(record.call_site, CallSite | None)
    if record.call_site is not None:
        assert_type(record.call_site.file, str)
        assert_type(record.call_site.line, int)
    assert_type(record.describe(), str)
    if record.request is not None:
        assert_type(record.request.method, str)
        assert_type(record.request.path, str)
    assert record.status is TaskStatus.RAN
    assert str(TaskStatus.NOT_RUN) == "not run"

    for records in (bgtasks.tasks, bgtasks.deferred, bgtasks.dropped, bgtasks.failed):
        assert_type(records, list[TaskRecord])


def test_assertions(bgtasks: BackgroundTaskCapture) -> None:
    expected = task(send_welcome_email, email="a@b.com")
    assert_type(expected, ExpectedTask)
    assert_type(assert_task_ran(send_welcome_email, "a@b.com"), TaskRecord)
    assert_type(assert_task_failed(audit, "signup", user_id=1), TaskRecord)
    assert_type(assert_task_not_added(audit, "login"), None)
    assert_type(assert_task_count(2), list[TaskRecord])
    assert_type(assert_task_count(1, expected), list[TaskRecord])
    assert_type(assert_tasks_in_order(audit, expected), list[TaskRecord])
    assert_type(assert_no_tasks(), None)
    assert_type(bgtasks.assert_task_added(audit), TaskRecord)
    assert_type(bgtasks.assert_tasks_in_order(expected, audit), list[TaskRecord])
    assert_type(pytest_bgtasks.assert_task_added(audit), TaskRecord)
    assert_type(assert_task_added(task(audit, "signup")), TaskRecord)
    assert_type(assert_task_added("audit", "signup"), TaskRecord)
    assert_type(task("audit", "signup"), ExpectedTask)
    for finding in bgtasks.findings():
        assert_type(finding, Finding)
        assert_type(finding.records, tuple[TaskRecord, ...])
        assert_type(finding.message, str)
        assert finding.kind in ("dropped", "ran_again", "hidden_failure", "did_nothing", "unrun")


@pytest.mark.bgtasks(mode="defer", on_dropped="warn", allow_failures=True)
def test_control(bg_client: TestClient, bgtasks: BackgroundTaskCapture) -> None:
    assert_type(bgtasks.mode, Literal["run", "defer", "skip", "worker"])
    bgtasks.mode = "skip"
    bgtasks.fail(send_welcome_email, ConnectionRefusedError("smtp down"), times=1)
    bgtasks.fail(task(send_welcome_email, "vip@b.com"), ConnectionError, propagate=True)
    bgtasks.fail(audit)
    bgtasks.skip(audit)
    bgtasks.defer(task(audit, "signup"))
    sent: list[str] = []
    bgtasks.replace(task(send_welcome_email, "a@b.com"), sent.append)
    bgtasks.replace(audit, audit)
    assert_type(bgtasks.run_deferred(), list[TaskRecord])
    assert_type(bgtasks.run_deferred(only=audit, limit=1, timeout=2.5), list[TaskRecord])
    with bgtasks.capture() as block:
        bg_client.post("/signup", json={"email": "a@b.com"})
    assert_type(block, TaskLog)
    assert_type(block.tasks, list[TaskRecord])
    assert_type(block.assert_task_added(send_welcome_email), TaskRecord)
    record = bgtasks.assert_task_failed(audit)
    assert isinstance(record.exception, SimulatedTaskError)


def test_clients_with_options(bg_client_factory: Callable[..., TestClient]) -> None:
    client = bg_client_factory(base_url="https://api.example", headers={"x-user": "ada"})
    assert_type(client, TestClient)
    quiet = bg_client_factory(raise_server_exceptions=False)
    assert_type(quiet.post("/checkout").status_code, int)


async def test_async(bgtasks: BackgroundTaskCapture) -> None:
    assert_type(await bgtasks.arun_deferred(), list[TaskRecord])
    assert_type(await bgtasks.arun_deferred(task(audit), limit=2), list[TaskRecord])


def capture_without_pytest() -> list[TaskRecord]:
    with BackgroundTaskCapture(mode="skip") as capture:
        assert_type(capture, BackgroundTaskCapture)
    return capture.tasks


def mistakes_the_checkers_catch(bgtasks: BackgroundTaskCapture, record: TaskRecord) -> None:
    bgtasks.mode = "later"  # type: ignore[assignment]
    BackgroundTaskCapture(mode="always")  # type: ignore[arg-type]
    bgtasks.run_deferred(limit="all")  # type: ignore[arg-type]
    bgtasks.replace(audit, "audit")  # type: ignore[arg-type]
    assert_task_count("2")  # type: ignore[arg-type]
    record.status = "ran"  # type: ignore[assignment]
    bgtasks.arun_deferred()  # type: ignore[unused-coroutine]
    bgtasks.fail(42)  # type: ignore[arg-type]
    bgtasks.skip(None)  # type: ignore[arg-type]
    assert_task_added(42)  # type: ignore[arg-type]
    task(None)  # type: ignore[arg-type]
