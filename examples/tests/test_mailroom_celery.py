"""The welcome email after Mailroom moved it to Celery: the same test, for BackgroundTasks and
for Celery, run in this process and by a real worker on a real Redis-protocol server."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from starlette.testclient import TestClient

from mailroom import config, tasks, worker
from pytest_bgtasks import BackgroundTaskCapture, TaskRequest

NOWHERE = "redis://127.0.0.1:9/0"
"""A broker where nothing listens: outside the worker mode nothing connects to it."""


@pytest.fixture(
    params=["background-tasks", "celery-in-process", "celery-worker"],
)
def email_task(request: pytest.FixtureRequest, app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Where the app sends the welcome email, and the task a test names to match it."""
    if request.param == "background-tasks":
        return tasks.send_welcome_email
    broker = NOWHERE
    if request.param == "celery-worker":
        broker = request.getfixturevalue("bgtasks_redis_url")
        request.getfixturevalue("bgtasks").mode = "worker"
    settings = dataclasses.replace(config.settings, celery_broker=broker)
    monkeypatch.setattr(config, "settings", settings)
    return worker.send_welcome_email


@pytest.mark.slow  # one case starts a Redis-protocol server
def test_signup_sends_the_welcome_email(
    email_task: Any, bg_client: TestClient, bgtasks: BackgroundTaskCapture, smtp_server: Any
) -> None:
    assert bg_client.post("/signup", json={"email": "a@b.com"}).status_code == 201
    bgtasks.wait(timeout=10)

    record = bgtasks.assert_task_ran(email_task, "a@b.com")
    assert record.request == TaskRequest("POST", "/signup")
    [message] = smtp_server.messages
    assert message["To"] == "a@b.com"
    assert message["Subject"] == "Welcome to Mailroom"


@pytest.mark.slow  # one case starts a Redis-protocol server
def test_an_smtp_outage_does_not_break_signup(
    email_task: Any, bg_client: TestClient, bgtasks: BackgroundTaskCapture, smtp_server: Any
) -> None:
    bgtasks.fail(email_task, ConnectionRefusedError("smtp down"))
    assert bg_client.post("/signup", json={"email": "a@b.com"}).status_code == 201
    bgtasks.wait(timeout=10)

    record = bgtasks.assert_task_failed(email_task, "a@b.com")
    assert isinstance(record.exception, ConnectionRefusedError)
    assert smtp_server.messages == []
