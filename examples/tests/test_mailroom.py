"""Mailroom's test suite, written the way a pytest-bgtasks user writes tests.

Everything is real: the app sends mail to an SMTP server on loopback (the `smtp_server`
fixture) and stores data in a fresh SQLite file. pytest-bgtasks records each background
task the app schedules and lets each test decide whether it runs, waits, is skipped or fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest.mock import ANY

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from mailroom import app as app_module
from mailroom import db
from mailroom.tasks import CsvImportError, audit, import_csv, send_welcome_email
from pytest_bgtasks import (
    BackgroundTaskCapture,
    TaskStatus,
    assert_task_added,
    assert_task_not_added,
    task,
)

try:
    import httpx2 as httpx  # the client Starlette 1.2 and newer run on
except ModuleNotFoundError:  # older Starlette runs on httpx
    import httpx

CONTACTS = "email,name\nann@example.com,Ann\nbob@example.com,Bob\n"
CSV = {"content-type": "text/csv"}


def app_line(code: str) -> str:
    """Where a record says a task was added, for the one line of mailroom/app.py that contains
    `code`: 'examples/mailroom/app.py:LINE', relative to the working directory."""
    lines = Path(app_module.__file__).read_text().splitlines()
    [lineno] = [n for n, line in enumerate(lines, start=1) if code in line]
    return f"{os.path.relpath(app_module.__file__)}:{lineno}"


# Sign-up: a welcome email and an audit entry after the response.


def test_signup_sends_welcome_email(bg_client: TestClient) -> None:
    r = bg_client.post("/signup", json={"email": "a@b.com"})
    assert r.status_code == 201
    assert_task_added(send_welcome_email, "a@b.com")


def test_welcome_email_reaches_the_smtp_server(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture, smtp_server
) -> None:
    bg_client.post("/signup", json={"email": "a@b.com"})

    [message] = smtp_server.messages
    assert message["To"] == "a@b.com"
    assert message["Subject"] == "Welcome to Mailroom"
    assert "thanks for signing up" in message.get_content()
    rec = bgtasks.assert_task_ran(send_welcome_email, "a@b.com")
    assert repr(rec) == "send_welcome_email('a@b.com') [ran] POST /signup"
    assert str(rec.request) == "POST /signup"
    assert rec.added_at == app_line("add_task(send_welcome_email, body.email)")


def test_signup_is_audited_before_the_email_is_sent(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture
) -> None:
    user = bg_client.post("/signup", json={"email": "a@b.com"}).json()

    bgtasks.assert_tasks_in_order(
        task(audit, "user.signup", user_id=user["id"]),
        send_welcome_email,
    )
    with db.connect() as conn:
        rows = conn.execute("SELECT event, details FROM audit_log").fetchall()
    assert [(row["event"], json.loads(row["details"])) for row in rows] == [
        ("user.signup", {"user_id": user["id"]}),
    ]


def test_duplicate_signup_schedules_nothing(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture
) -> None:
    bg_client.post("/signup", json={"email": "a@b.com"})

    with bgtasks.capture() as block:
        r = bg_client.post("/signup", json={"email": "a@b.com"})

    assert r.status_code == 409
    block.assert_no_tasks()
    bgtasks.assert_task_count(1, send_welcome_email)


# Deciding what happens to the email: defer, fail, skip, replace.


@pytest.mark.bgtasks(mode="defer")
def test_email_waits_until_we_say(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture, smtp_server
) -> None:
    bg_client.post("/signup", json={"email": "a@b.com"})
    assert smtp_server.messages == []  # nothing sent yet
    bgtasks.run_deferred()
    assert len(smtp_server.messages) == 1


@pytest.mark.bgtasks(mode="defer")
def test_deferred_tasks_can_be_run_selectively(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture, smtp_server
) -> None:
    bg_client.post("/signup", json={"email": "a@b.com"})
    assert [rec.func for rec in bgtasks.deferred] == [audit, send_welcome_email]

    [email] = bgtasks.run_deferred(only=send_welcome_email)
    assert email.status == TaskStatus.RAN
    assert len(smtp_server.messages) == 1
    assert bgtasks.assert_task_added(audit).status == TaskStatus.DEFERRED

    [audit_entry] = bgtasks.run_deferred()
    assert audit_entry.func is audit
    assert audit_entry.status == TaskStatus.RAN


def test_smtp_outage_does_not_break_signup(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture, smtp_server
) -> None:
    bgtasks.fail(send_welcome_email, ConnectionRefusedError("smtp down"))
    r = bg_client.post("/signup", json={"email": "a@b.com"})
    assert r.status_code == 201  # the response is unaffected
    rec = bgtasks.assert_task_failed(send_welcome_email)
    assert isinstance(rec.exception, ConnectionRefusedError)
    assert smtp_server.messages == []  # the real function never ran
    bgtasks.assert_task_ran(audit, "user.signup", user_id=r.json()["id"])  # still audited


def test_skipped_email_is_recorded_but_never_sent(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture, smtp_server
) -> None:
    bgtasks.skip(send_welcome_email)
    r = bg_client.post("/signup", json={"email": "a@b.com"})

    assert r.status_code == 201
    assert bgtasks.assert_task_added(send_welcome_email, "a@b.com").status == TaskStatus.SKIPPED
    bgtasks.assert_task_ran(audit)  # the other task of the response still runs
    assert smtp_server.messages == []


def test_replaced_email_task_calls_the_fake(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture, smtp_server
) -> None:
    outbox: list[str] = []
    bgtasks.replace(send_welcome_email, outbox.append)

    bg_client.post("/signup", json={"email": "a@b.com"})
    bg_client.post("/signup", json={"email": "c@d.com"})

    assert outbox == ["a@b.com", "c@d.com"]
    assert smtp_server.messages == []


# Contact list uploads: the import runs after the 202 response.


def test_contact_list_is_imported_into_sqlite(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture
) -> None:
    r = bg_client.post("/upload", content=CONTACTS, headers=CSV)

    assert r.status_code == 202
    upload_id = r.json()["id"]
    bgtasks.assert_task_ran(import_csv, upload_id, ANY)
    assert_task_not_added(send_welcome_email)  # imported contacts are not emailed
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT email, name FROM rows WHERE upload_id = ? ORDER BY id", (upload_id,)
        ).fetchall()
    assert [tuple(row) for row in rows] == [("ann@example.com", "Ann"), ("bob@example.com", "Bob")]
    assert bg_client.get(f"/uploads/{upload_id}").json() == {
        "id": upload_id,
        "status": "imported",
        "row_count": 2,
        "error": None,
    }


def test_upload_stays_pending_until_the_import_runs(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture
) -> None:
    bgtasks.defer(import_csv)
    upload_id = bg_client.post("/upload", content=CONTACTS, headers=CSV).json()["id"]
    assert bg_client.get(f"/uploads/{upload_id}").json()["status"] == "pending"

    [rec] = bgtasks.run_deferred()

    assert rec.func is import_csv
    assert rec.status == TaskStatus.RAN
    assert bg_client.get(f"/uploads/{upload_id}").json()["status"] == "imported"


@pytest.mark.parametrize(
    ("csv_text", "error"),
    [
        pytest.param(
            "mail,name\nann@example.com,Ann\n",
            "expected header 'email,name', got 'mail,name'",
            id="wrong-header",
        ),
        pytest.param(
            "email,name\nann@example.com,Ann\nbob@example.com\n",
            "line 3: expected 2 columns, got 1",
            id="wrong-column-count",
        ),
    ],
)
def test_bad_contact_list_fails_the_import(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture, csv_text: str, error: str
) -> None:
    # A real task failure propagates as it would without the plugin: TestClient
    # re-raises it to the test after the 202 response was sent.
    with pytest.raises(CsvImportError) as excinfo:
        bg_client.post("/upload", content=csv_text, headers=CSV)

    rec = bgtasks.assert_task_failed(import_csv)
    assert rec.exception is excinfo.value  # the original exception, not a copy
    assert str(rec.exception) == error
    upload_id, text = rec.args
    assert text == csv_text
    assert bg_client.get(f"/uploads/{upload_id}").json() == {
        "id": upload_id,
        "status": "failed",
        "row_count": 0,
        "error": error,
    }


# Admin area: a dependency adds an audit task to the same batch as the endpoint's task.


def test_admin_access_is_audited_before_the_endpoint_task(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture
) -> None:
    user_id = bg_client.post("/signup", json={"email": "a@b.com"}).json()["id"]
    path = f"/admin/users/{user_id}/welcome-email"

    with bgtasks.capture() as block:
        r = bg_client.post(path)

    assert r.status_code == 202
    block.assert_task_count(2)
    block.assert_tasks_in_order(
        task(audit, "admin.access", method="POST", path=path),
        task(send_welcome_email, "a@b.com"),
    )
    access, email = block.tasks  # added by the dependency, then by the endpoint
    assert access.added_at == app_line('add_task(audit, "admin.access"')
    assert email.added_at == app_line('add_task(send_welcome_email, row["email"])')


def test_failed_admin_request_never_runs_its_access_audit(
    bg_client: TestClient, bgtasks: BackgroundTaskCapture
) -> None:
    path = "/admin/users/999/welcome-email"
    r = bg_client.post(path)

    assert r.status_code == 404
    # The endpoint raised, so FastAPI runs none of the request's tasks, including the one
    # its dependency added: the audit entry is scheduled and then dropped.
    rec = bgtasks.assert_task_added(audit, "admin.access", method="POST", path=path)
    assert rec.status == TaskStatus.DROPPED
    bgtasks.assert_task_not_added(send_welcome_email)


# Assertion messages say what was expected and what happened instead.


def test_missing_task_is_reported_with_what_was_added(bg_client: TestClient) -> None:
    bg_client.post("/signup", json={"email": "b@b.com"})

    with pytest.raises(AssertionError) as excinfo:
        assert_task_added(send_welcome_email, "a@b.com")

    audit_site = app_line('add_task(audit, "user.signup"')
    email_site = app_line("add_task(send_welcome_email, body.email)")
    assert str(excinfo.value).splitlines() == [
        "No background task matching send_welcome_email('a@b.com') was added.",
        "2 background tasks were added:",
        f"- audit('user.signup', user_id=1) [ran] POST /signup  ({audit_site})",
        f"- send_welcome_email('b@b.com') [ran] POST /signup  ({email_site})",
        "Closest: send_welcome_email: arg 'email' expected 'a@b.com', got 'b@b.com'",
        "See https://pytest-bgtasks.github.io/pytest-bgtasks/assertions/#matching",
    ]


# Async tests: any client works; deferred tasks run on the test's own event loop.


@pytest.mark.anyio
@pytest.mark.bgtasks(mode="defer")
async def test_signup_through_an_async_client(
    app: FastAPI, bgtasks: BackgroundTaskCapture, smtp_server
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://mailroom") as client:
        r = await client.post("/signup", json={"email": "a@b.com"})

    assert r.status_code == 201
    assert smtp_server.messages == []
    ran = await bgtasks.arun_deferred()
    assert [rec.func for rec in ran] == [audit, send_welcome_email]
    [message] = smtp_server.messages
    assert message["To"] == "a@b.com"
