"""What a Mailroom developer sees when a background task is silently dropped.

FastAPI attaches the injected `BackgroundTasks` only to a response without a `background` of its
own. Below, a "welcome back" endpoint adds the welcome email, then returns a response carrying
an audit task: the email is never sent, the client still gets its 202, and nothing in the app
says so. The test of that endpoint passes its assertions; pytest-bgtasks fails it at teardown.
The test runs in a pytest session of its own (pytester), so this file can show the whole report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mailroom

WELCOME_BACK = """
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from mailroom.tasks import audit, send_welcome_email


def add_welcome_back(app: FastAPI) -> None:
    @app.post("/welcome-back", status_code=202)
    def welcome_back(body: dict, background_tasks: BackgroundTasks) -> JSONResponse:
        background_tasks.add_task(send_welcome_email, body["email"])
        audit_task = BackgroundTask(audit, "user.welcome_back")
        return JSONResponse({}, status_code=202, background=audit_task)
"""

CONFTEST = """
import dataclasses

import pytest

from mailroom import config, db
from mailroom.app import create_app
from welcome_back import add_welcome_back


@pytest.fixture
def app(tmp_path, monkeypatch):
    settings = dataclasses.replace(config.settings, database=tmp_path / "mailroom.db")
    monkeypatch.setattr(config, "settings", settings)
    db.init_schema()
    app = create_app()
    add_welcome_back(app)
    return app
"""

TEST = """
def test_welcome_back(bg_client):
    r = bg_client.post("/welcome-back", json={"email": "a@b.com"})
    assert r.status_code == 202
"""


@pytest.mark.slow  # a pytest session of its own, in a subprocess
def test_a_silently_dropped_email_fails_the_test_at_teardown(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(welcome_back=WELCOME_BACK, test_welcome_back=TEST)
    pytester.makeconftest(CONFTEST)
    # Keeps what PYTHONPATH already holds (a mutation run points it at the mutated copy).
    monkeypatch.setenv("PYTHONPATH", str(Path(mailroom.__file__).parent.parent), prepend=os.pathsep)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1, errors=1)
    email_site = f"welcome_back.py:{line_of('add_task(send_welcome_email')}"
    audit_site = f"welcome_back.py:{line_of('BackgroundTask(audit')}"
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_welcome_back _*",
            "1 background task was added but never run: no response carried it.",
            f"- send_welcome_email('a@b.com') [dropped] POST /welcome-back  ({email_site})",
            "    never run: the response carried audit('user.welcome_back') instead; an endpoint "
            "that returns a response with its own `background` replaces the injected "
            "BackgroundTasks",
            'If this is expected, use @pytest.mark.bgtasks(on_dropped="warn") or "ignore".',
            "*- Captured background tasks -*",
            "POST /welcome-back, answered with 202",
            f"  - send_welcome_email('a@b.com')  dropped  {email_site}",
            "*never run: the response carried audit('user.welcome_back') instead*",
            f"  - audit('user.welcome_back')     ran      {audit_site}",
            "*= 1 passed, *1 error in *",  # older Starlettes add warnings of their own
        ]
    )


def line_of(code: str) -> int:
    """The line of welcome_back.py (as pytester writes it, stripped) that contains `code`."""
    lines = WELCOME_BACK.strip().splitlines()
    [number] = [n for n, line in enumerate(lines, start=1) if code in line]
    return number
