"""The plugin's surface, run in a separate pytest session: options, marker, header,
teardown checks and the report section."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from starlette.background import BackgroundTask
from starlette.testclient import TestClient

import manual
from pytest_bgtasks import BackgroundTaskCapture

LISTED_AT_MOST = 50
"""Tasks a report section lists (the rest are counted), as the manual says."""

CATCHES = "https://pytest-bgtasks.github.io/pytest-bgtasks/catches/"

APP = """
import pytest
from fastapi import BackgroundTasks, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.testclient import TestClient
from pytest_bgtasks import TaskStatus, assert_task_added

CATCHES = "https://pytest-bgtasks.github.io/pytest-bgtasks/catches/"

done = []

def send_welcome_email(email):
    done.append(email)

def audit(event):
    done.append(event)

def explode(value):
    raise ZeroDivisionError(value)

@pytest.fixture
def app():
    app = FastAPI()

    @app.post("/signup")
    def signup(background_tasks: BackgroundTasks):
        background_tasks.add_task(send_welcome_email, "a@b.com")  # signup
        return {}

    @app.post("/own-background")
    def own_background(background_tasks: BackgroundTasks):
        background_tasks.add_task(send_welcome_email, "a@b.com")  # own
        return JSONResponse({}, background=BackgroundTask(audit, "replaced"))  # replaced

    @app.post("/not-found")
    def not_found(background_tasks: BackgroundTasks):
        background_tasks.add_task(send_welcome_email, "a@b.com")  # not-found
        raise HTTPException(404, "no such user")

    @app.post("/explode")
    def explode_later(background_tasks: BackgroundTasks):
        background_tasks.add_task(explode, "in the background")  # explode
        return {}

    return app
"""


def make_tests(pytester: pytest.Pytester, body: str) -> None:
    pytester.makeconftest(APP)
    pytester.makepyfile(test_it=textwrap.dedent(body))


def site(pytester: pytest.Pytester, code: str) -> str:
    """'conftest.py:LINE' of the conftest line containing `code`."""
    lines = (pytester.path / "conftest.py").read_text().splitlines()
    (number,) = [n for n, line in enumerate(lines, start=1) if code in line]
    return f"conftest.py:{number}"


def test_header_says_the_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    pytester.runpytest().stdout.fnmatch_lines(["bgtasks: mode=run"])
    pytester.runpytest("--bgtasks-mode=defer").stdout.fnmatch_lines(["bgtasks: mode=defer"])
    pytester.makeini("[pytest]\nbgtasks_mode = skip\n")
    pytester.runpytest().stdout.fnmatch_lines(["bgtasks: mode=skip"])
    pytester.runpytest("--bgtasks-mode", "run").stdout.fnmatch_lines(["bgtasks: mode=run"])


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--bgtasks-mode=later"],
            "",
            "ERROR: --bgtasks-mode: 'later' is not one of: run, defer, skip, worker.",
        ),
        (
            [],
            "bgtasks_mode = later",
            "ERROR: ini bgtasks_mode: 'later' is not one of: run, defer, skip, worker.",
        ),
        (
            ["--bgtasks-mode="],
            "bgtasks_mode = skip",
            "ERROR: --bgtasks-mode: '' is not one of: run, defer, skip, worker.",
        ),
        (
            [],
            "bgtasks_on_dropped = explode",
            "ERROR: ini bgtasks_on_dropped: 'explode' is not one of: fail, warn, ignore.",
        ),
        (
            [],
            "bgtasks_allow_failures = maybe",
            "ERROR: ini bgtasks_allow_failures: invalid truth value 'maybe'; expected one of: true, false.",
        ),
        (
            [],
            "bgtasks_assert_all_run = 2",
            "ERROR: ini bgtasks_assert_all_run: invalid truth value '2'; expected one of: true, false.",
        ),
    ],
    ids=[
        "cli-mode",
        "ini-mode",
        "cli-empty-mode",
        "ini-on-dropped",
        "ini-allow-failures",
        "ini-assert-all-run",
    ],
)
def test_bad_option_values_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.lines
    manual.assert_listed(message)


def test_help_lists_the_options(pytester: pytest.Pytester) -> None:
    # Another plugin (here a conftest) can add its options to the plugin's group by name.
    pytester.makeconftest(
        """
        def pytest_addoption(parser):
            parser.getgroup("bgtasks").addoption("--smtp-port", help="port of the SMTP server.")
        """
    )
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())  # help lines wrap at the terminal's width
    for shown in [
        "background tasks (pytest-bgtasks): --bgtasks-mode=MODE what happens to captured "
        "background tasks: run (default), defer, skip or worker. --smtp-port=SMTP_PORT port of the SMTP "
        "server.",
        "bgtasks_mode (string): default mode for captured tasks: run, defer, skip or worker.",
        "bgtasks_on_dropped (string): a task added but never carried by its response: fail "
        "(default), warn or ignore.",
        "bgtasks_allow_failures (bool): do not fail a test whose task raised an exception the "
        "test never saw.",
        "bgtasks_assert_all_run (bool): fail a test that leaves deferred tasks unrun.",
        "bgtasks_app_fixture (string): name of the fixture that returns the ASGI app for "
        "bg_client (default: app).",
    ]:
        assert shown in text
    pytester.runpytest("--markers").stdout.fnmatch_lines(
        [
            "@pytest.mark.bgtasks(*, mode=None, on_dropped=None, allow_failures=None, assert_all_run=None):*"
        ]
    )


def test_unset_options_read_as_their_defaults(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure()
    assert config.getoption("bgtasks_mode") is None
    defaults = {
        "bgtasks_mode": "run",
        "bgtasks_on_dropped": "fail",
        "bgtasks_allow_failures": False,
        "bgtasks_assert_all_run": False,
        "bgtasks_app_fixture": "app",
    }
    assert {name: config.getini(name) for name in defaults} == defaults


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            'mdoe="defer"',
            "TypeError: @pytest.mark.bgtasks() got an unexpected keyword argument 'mdoe'; valid keywords: mode, on_dropped, allow_failures, assert_all_run.",
        ),
        (
            '"defer"',
            "TypeError: @pytest.mark.bgtasks takes keyword arguments only, got ('defer',).",
        ),
        (
            'mode="later"',
            "ValueError: @pytest.mark.bgtasks(mode=...): 'later' is not one of: run, defer, skip, worker.",
        ),
        (
            'on_dropped="loud"',
            "ValueError: @pytest.mark.bgtasks(on_dropped=...): 'loud' is not one of: fail, warn, ignore.",
        ),
        (
            'allow_failures="yes"',
            "TypeError: @pytest.mark.bgtasks(allow_failures=...) expects True or False, got 'yes'.",
        ),
        (
            "assert_all_run=1",
            "TypeError: @pytest.mark.bgtasks(assert_all_run=...) expects True or False, got 1.",
        ),
    ],
    ids=[
        "unknown-keyword",
        "positional",
        "bad-mode",
        "bad-on-dropped",
        "not-a-bool",
        "not-a-bool-too",
    ],
)
@pytest.mark.parametrize("fixture", ["bgtasks", "bg_client"])
def test_bad_marker_arguments_are_clear_errors(
    pytester: pytest.Pytester, marker: str, message: str, fixture: str
) -> None:
    make_tests(
        pytester,
        f"""
        import pytest

        @pytest.mark.bgtasks({marker})
        def test_it({fixture}):
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*_ ERROR at setup of test_it _*", message, "*short test summary*"]
    )
    assert_shown_once(result, message)
    manual.assert_listed(message)


def assert_shown_once(result: pytest.RunResult, message: str) -> None:
    """The error's report shows `message` once, alone: no exception it was raised while
    handling, no traceback into the plugin."""
    assert result.stdout.lines.count(message) == 1
    output = result.stdout.str()
    assert "During handling of the above exception" not in output
    assert "direct cause of the following exception" not in output
    # The error's section ends where the next one (warnings summary, short test summary) starts.
    report = output.split(" ERROR at setup of ", 1)[1].split("\n=", 1)[0]
    assert "pytest_bgtasks" not in report


def test_closest_marker_wins_per_keyword(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        import pytest

        pytestmark = pytest.mark.bgtasks(mode="skip", on_dropped="ignore")

        @pytest.mark.bgtasks(mode="defer")
        def test_function_marker_overrides_module_marker(bg_client, bgtasks):
            bg_client.post("/signup")
            assert bgtasks.mode == "defer"
            assert len(bgtasks.deferred) == 1
            bg_client.post("/own-background")  # dropped, and on_dropped="ignore" still applies

        def test_module_marker(bg_client, bgtasks):
            assert bgtasks.mode == "skip"
        """,
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_mode_precedence_marker_over_cli_over_ini(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        import pytest

        def test_default(bgtasks):
            assert bgtasks.mode == "defer"

        @pytest.mark.bgtasks(mode="run")
        def test_marked(bgtasks):
            assert bgtasks.mode == "run"
        """,
    )
    pytester.makeini("[pytest]\nbgtasks_mode = skip\n")
    pytester.runpytest("--bgtasks-mode=defer").assert_outcomes(passed=2)


def test_the_marker_alone_turns_capture_on(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        import pytest
        from starlette.testclient import TestClient
        from pytest_bgtasks import assert_task_added, TaskStatus
        from conftest import send_welcome_email

        @pytest.mark.bgtasks(mode="skip")
        def test_it(app):
            with TestClient(app) as client:
                client.post("/signup")
            assert assert_task_added(send_welcome_email, "a@b.com").status is TaskStatus.SKIPPED
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_dropped_task_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        def test_it(bg_client):
            assert bg_client.post("/own-background").status_code == 200
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    email, replaced = site(pytester, "# own"), site(pytester, "# replaced")
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_it _*",
            "1 background task was added but never run: no response carried it.",
            f"- send_welcome_email('a@b.com') [dropped] POST /own-background  ({email})",
            "    never run: the response carried audit('replaced') instead; an endpoint that returns "
            "a response with its own `background` replaces the injected BackgroundTasks",
            'If this is expected, use @pytest.mark.bgtasks(on_dropped="warn") or "ignore".',
            "*- Captured background tasks -*",
            "POST /own-background, answered with 200",
            f"  - send_welcome_email('a@b.com')  dropped  {email}",
            "      never run: the response carried audit('replaced') instead; an endpoint that "
            "returns a response with its own `background` replaces the injected BackgroundTasks",
            f"  - audit('replaced')              ran      {replaced}",
        ]
    )


def test_on_dropped_warn_and_ignore(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        import pytest

        @pytest.mark.bgtasks(on_dropped="warn")
        def test_warn(bg_client):
            bg_client.post("/own-background")

        @pytest.mark.bgtasks(on_dropped="ignore")
        def test_ignore(bg_client):
            bg_client.post("/own-background")
        """,
    )
    result = pytester.runpytest("-W", "default")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "test_it.py::test_warn",
            "*BackgroundTaskWarning: 1 background task was added but never run*",
        ]
    )
    assert result.stdout.str().count("BackgroundTaskWarning:") == 1
    result = pytester.runpytest("-W", "default", "-k", "ignore")
    result.assert_outcomes(passed=1, deselected=1)
    assert "BackgroundTaskWarning" not in result.stdout.str()
    pytester.makeini("[pytest]\nbgtasks_on_dropped = warn\n")
    pytester.makepyfile(
        test_it="def test_unmarked(bg_client):\n    bg_client.post('/own-background')\n"
    )
    result = pytester.runpytest("-W", "default")
    result.assert_outcomes(passed=1)
    assert result.stdout.str().count("BackgroundTaskWarning:") == 1


def test_a_task_dropped_because_the_endpoint_raised_is_not_a_complaint(
    pytester: pytest.Pytester,
) -> None:
    make_tests(
        pytester,
        """
        from pytest_bgtasks import TaskStatus

        def test_it(bg_client, bgtasks):
            assert bg_client.post("/not-found").status_code == 404
            (record,) = bgtasks.dropped
            assert record.reason == (
                "never run: the endpoint raised "
                "HTTPException(status_code=404, detail='no such user'), answered with 404"
            )
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_task_exception_the_client_hid_fails_the_test(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        import pytest
        from starlette.testclient import TestClient

        def test_hidden(app, bgtasks):
            with TestClient(app, raise_server_exceptions=False) as client:
                assert client.post("/explode").status_code == 200

        def test_seen(bg_client):
            with pytest.raises(ZeroDivisionError):
                bg_client.post("/explode")

        from conftest import explode

        @pytest.mark.bgtasks(allow_failures=True)
        def test_allowed(app, bgtasks):
            with TestClient(app, raise_server_exceptions=False) as client:
                client.post("/explode")
            bgtasks.assert_task_failed(explode)
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_hidden _*",
            "1 background task raised and the test never saw the exception (the client or a "
            "middleware hid it):",
            f"- explode('in the background') [failed] POST /explode  ({site(pytester, '# explode')})",
            "    raised: ZeroDivisionError('in the background')",
            "    Traceback (most recent call last):",
            f'      File "conftest.py", line {site(pytester, "raise ZeroDivisionError")[12:]}, in explode',
            "        raise ZeroDivisionError(value)",
            "    ZeroDivisionError: in the background",
            "If the test expects this, assert it with bgtasks.assert_task_failed(...) and use "
            "@pytest.mark.bgtasks(allow_failures=True).",
        ]
    )
    pytester.makeini("[pytest]\nbgtasks_allow_failures = true\n")
    pytester.runpytest().assert_outcomes(passed=3)


def test_a_task_that_returned_a_coroutine_fails_the_test(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        import pytest
        from fastapi import BackgroundTasks

        async def notify(channel):
            pass

        def add_route(app):
            @app.post("/notify")
            def post_notify(background_tasks: BackgroundTasks):
                background_tasks.add_task(lambda: notify("ops"))  # lambda
                return {}

        def test_notify(app, bg_client):
            add_route(app)
            assert bg_client.post("/notify").status_code == 200

        @pytest.mark.bgtasks(allow_failures=True)
        def test_allowed(app, bg_client, bgtasks):
            add_route(app)
            bg_client.post("/notify")
            assert bgtasks.failed[0].problem.startswith("<lambda> is a sync callable")
        """,
    )
    result = pytester.runpytest("-W", "error::RuntimeWarning")  # the plugin closes the coroutine
    result.assert_outcomes(passed=2, errors=1)
    lines = (pytester.path / "test_it.py").read_text().splitlines()
    (line,) = [n for n, text in enumerate(lines, start=1) if "# lambda" in text]
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_notify _*",
            "1 background task never did its work:",
            f"- <lambda>() [failed] POST /notify  (test_it.py:{line})",
            "    <lambda> is a sync callable that returned <coroutine object notify>, which nobody "
            "awaits: Starlette runs sync tasks in a thread and drops what they return; give "
            "add_task the async function",
            "If the test expects this, use @pytest.mark.bgtasks(allow_failures=True).",
        ]
    )


def test_assert_all_run_fails_on_deferred_tasks_left_unrun(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        import pytest

        @pytest.mark.bgtasks(mode="defer", assert_all_run=True)
        def test_left(bg_client):
            bg_client.post("/signup")

        @pytest.mark.bgtasks(mode="defer", assert_all_run=True)
        def test_run(bg_client, bgtasks):
            bg_client.post("/signup")
            bgtasks.run_deferred()

        @pytest.mark.bgtasks(mode="defer")
        def test_not_asked(bg_client):
            bg_client.post("/signup")
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_left _*",
            "1 deferred background task was never run:",
            f"- send_welcome_email('a@b.com') [deferred] POST /signup  ({site(pytester, '# signup')})",
            "Run it with bgtasks.run_deferred(), or drop assert_all_run=True.",
            f"See {CATCHES}#left-unrun",
        ]
    )
    pytester.makeini("[pytest]\nbgtasks_assert_all_run = true\n")
    pytester.runpytest().assert_outcomes(passed=3, errors=2)


def test_no_teardown_complaint_on_a_test_that_already_failed(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        import pytest

        def test_failing(bg_client):
            bg_client.post("/own-background")
            assert False, "the test's own failure"

        @pytest.mark.xfail(strict=True)
        def test_xfail(bg_client):
            bg_client.post("/own-background")
            assert False
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1, xfailed=1)
    result.stdout.no_fnmatch_line("*never run*its response never carried*ERROR*")
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


def test_a_failing_test_report_lists_captured_tasks(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        from pytest_bgtasks import assert_task_added
        from conftest import audit

        def test_fails(bg_client):
            bg_client.post("/signup")
            assert_task_added(audit)

        def test_fails_with_nothing_captured(bgtasks):
            assert False

        def test_passes(bg_client):
            bg_client.post("/signup")
        """,
    )
    result = pytester.runpytest("--assert=plain")
    result.assert_outcomes(failed=2, passed=1)
    signup = site(pytester, "# signup")
    result.stdout.fnmatch_lines(
        [
            "*_ test_fails _*",
            "E       AssertionError: No background task matching audit(...) was added.",
            "E       1 background task was added:",
            f"E       - send_welcome_email('a@b.com') [ran] POST /signup  ({signup})",
            "*- Captured background tasks -*",
            "POST /signup, answered with 200",
            f"  - send_welcome_email('a@b.com')  ran  {signup}",
            "*_ test_fails_with_nothing_captured _*",
            "*- Captured background tasks -*",
            "No background tasks were added.",
        ]
    )
    assert result.stdout.str().count("Captured background tasks") == 2


TREE = """
import pytest
from fastapi import BackgroundTasks
from starlette.background import BackgroundTask
from conftest import audit, send_welcome_email

def test_fails(app, bg_client_factory, bgtasks):
    @app.post("/orders", status_code=201)
    def orders(background_tasks: BackgroundTasks):
        def follow_up():
            background_tasks.add_task(audit, "follow-up")  # child

        background_tasks.add_task(follow_up)  # parent
        return {}

    client = bg_client_factory(raise_server_exceptions=False)
    client.post("/orders")
    client.post("/explode")
    client.post("/not-found")
    client.post("/signup")
    BackgroundTask(audit, "outside")  # outside
    assert False, "the test's own failure"
"""


def tree_section(pytester: pytest.Pytester) -> list[str]:
    """The section of TREE's test: each line, plain."""
    lines = (pytester.path / "test_it.py").read_text().splitlines()

    def here(code: str) -> str:
        (number,) = [n for n, line in enumerate(lines, start=1) if code in line]
        return f"test_it.py:{number}"

    signup = site(pytester, "# signup")
    return [
        "POST /orders, answered with 201",
        f"  - follow_up()                    ran      {here('# parent')}",
        f"    - audit('follow-up')           ran      {here('# child')}",
        "POST /explode, answered with 200",
        f"  - explode('in the background')   failed   {site(pytester, '# explode')}",
        "      raised: ZeroDivisionError('in the background')",
        "POST /not-found, answered with 404",
        f"  - send_welcome_email('a@b.com')  dropped  {site(pytester, '# not-found')}",
        "      never run: the endpoint raised HTTPException(status_code=404, detail='no such "
        "user'), answered with 404",
        "POST /signup, answered with 200",
        f"  - send_welcome_email('a@b.com')  ran      {signup}",
        "outside any request",
        f"  - audit('outside')               pending  {here('# outside')}",
    ]


def test_the_report_section_draws_each_request_and_its_tasks(pytester: pytest.Pytester) -> None:
    make_tests(pytester, TREE)
    result = pytester.runpytest("--junitxml=report.xml")
    result.assert_outcomes(failed=1)
    section = tree_section(pytester)
    result.stdout.fnmatch_lines(
        ["*- Captured background tasks -*", *section, "*short test summary*"]
    )
    # The same text is a property of the test case in JUnit XML (pytest's own record_property
    # way), which CI systems show with the failure.
    (case,) = ElementTree.parse(pytester.path / "report.xml").getroot().iter("testcase")
    properties = {item.get("name"): item.get("value") for item in case.iter("property")}
    assert properties == {"bgtasks": "\n".join(section)}


def test_the_report_section_is_in_colour_on_a_terminal_that_has_it(
    pytester: pytest.Pytester,
) -> None:
    make_tests(pytester, TREE)
    result = pytester.runpytest("--color=yes", "--junitxml=report.xml")
    result.assert_outcomes(failed=1)
    section = tree_section(pytester)
    bold, green, red, yellow, reset = "\x1b[1m", "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[0m"
    output = result.stdout.lines
    assert f"{bold}POST /orders, answered with 201{reset}" in output
    assert f"{bold}outside any request{reset}" in output
    tasks = [line for line in output if re.match(r" +- ", line)]
    statuses = [
        f"  {green}ran{reset}      ",
        f"  {green}ran{reset}      ",
        f"  {red}{bold}failed{reset}   ",
        f"  {red}dropped{reset}  ",
        f"  {green}ran{reset}      ",
        f"  {yellow}pending{reset}  ",
    ]
    assert len(tasks) == len(statuses)
    for line, status in zip(tasks, statuses, strict=True):
        assert status in line
    # Without the colours, the lines are those of a plain terminal; JUnit XML gets plain text.
    plain = [re.sub(r"\x1b\[[\d;]*m", "", line) for line in output]
    start = plain.index(section[0])
    assert plain[start : start + len(section)] == section
    (case,) = ElementTree.parse(pytester.path / "report.xml").getroot().iter("testcase")
    assert [item.get("value") for item in case.iter("property")] == ["\n".join(section)]


def test_the_report_section_without_a_terminal(pytester: pytest.Pytester) -> None:
    make_tests(pytester, TREE)
    result = pytester.runpytest("-p", "no:terminal", "--junitxml=report.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    (case,) = ElementTree.parse(pytester.path / "report.xml").getroot().iter("testcase")
    assert [item.get("value") for item in case.iter("property")] == [
        "\n".join(tree_section(pytester))
    ]


def test_a_long_section_lists_the_first_tasks_and_counts_the_rest(
    bgtasks: BackgroundTaskCapture,
) -> None:
    tasks = [BackgroundTask(print, n) for n in range(LISTED_AT_MOST + 3)]
    lines = bgtasks.report().splitlines()
    assert lines[0] == "outside any request"
    assert len(lines) == 1 + LISTED_AT_MOST + 1
    assert re.fullmatch(r"  - print\(0\)   pending  tests/test_plugin\.py:\d+", lines[1])
    assert lines[-2].startswith(f"  - print({LISTED_AT_MOST - 1})  pending  tests/test_plugin.py:")
    assert lines[-1] == "... and 3 more"
    assert len(tasks) == len(bgtasks.tasks)


def test_a_task_shown_under_a_parent_of_another_request_says_which(
    bgtasks: BackgroundTaskCapture,
) -> None:
    app = FastAPI()

    def note(text: str) -> None:
        pass

    @app.get("/inner")
    def inner(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(note, "inner")  # inner
        return {}

    async def call_inner() -> None:  # a task that calls the app in turn
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/inner")

    @app.post("/outer")
    def outer(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(call_inner)  # outer
        return {}

    with TestClient(app) as client:
        client.post("/outer")
    source = Path(__file__).read_text().splitlines()
    inner_at, outer_at = (
        next(n for n, line in enumerate(source, start=1) if line.endswith(mark))
        for mark in ("# inner", "# outer")
    )
    assert bgtasks.report().splitlines() == [
        "POST /outer, answered with 200",
        f"  - call_inner()     ran  tests/test_plugin.py:{outer_at}",
        f"    - note('inner')  ran  tests/test_plugin.py:{inner_at}",
        "        scheduled during GET /inner, answered with 200",
    ]


def test_a_failed_assertion_points_at_the_test_not_into_the_plugin(
    pytester: pytest.Pytester,
) -> None:
    make_tests(
        pytester,
        """
        import pytest
        import pytest_bgtasks
        from conftest import audit, send_welcome_email

        CALLS = {
            "assert_task_added": (audit,),
            "assert_task_not_added": (send_welcome_email,),
            "assert_task_ran": (audit,),
            "assert_task_failed": (send_welcome_email,),
            "assert_task_count": (2,),
            "assert_no_tasks": (),
            "assert_tasks_in_order": (audit,),
        }

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.parametrize("owner", ["module", "fixture"])
        @pytest.mark.parametrize("name", CALLS)
        def test_assertion(bg_client, bgtasks, owner, name):
            bg_client.post("/signup")
            helper = getattr(pytest_bgtasks if owner == "module" else bgtasks, name)
            helper(*CALLS[name])

        @pytest.mark.anyio
        async def test_run_deferred_in_a_loop(bgtasks):
            bgtasks.run_deferred()

        @pytest.mark.anyio
        async def test_arun_deferred_with_a_bad_limit(bgtasks):
            await bgtasks.arun_deferred(limit=-1)
        """,
    )
    result = pytester.runpytest("--tb=short")
    result.assert_outcomes(failed=16)
    output = result.stdout.str()
    # The helpers hide their own frames (__tracebackhide__), as pytest's do: the error shows
    # right under the test's line. What they call is shown as usual.
    shown = re.findall(
        r"test_it\.py:\d+: in test_assertion\n    helper\(\*CALLS\[name\]\)\nE ", output
    )
    assert len(shown) == 14
    (frame,) = re.findall(r"_capture\.py:\d+: in (\S+)", output)
    assert "_deferred_args" in frame


TASK_FAILURES = """
import pytest
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from conftest import explode

async def explode_async(value):
    raise ZeroDivisionError(value)

def fake_explode(value):
    raise ZeroDivisionError(value)

async def fake_explode_async(value):
    raise ZeroDivisionError(value)

class OwnCall(BackgroundTask):
    async def __call__(self):
        await super().__call__()

@pytest.fixture
def anyio_backend():
    return "asyncio"

def test_sync(bg_client):
    bg_client.post("/explode")

def test_async(app, bg_client):
    app.post("/async")(lambda: JSONResponse({}, background=BackgroundTask(explode_async, 1)))
    bg_client.post("/async")

def test_replaced(bg_client, bgtasks):
    bgtasks.replace(explode, fake_explode)
    bg_client.post("/explode")

def test_replaced_async(bg_client, bgtasks):
    bgtasks.replace(explode, fake_explode_async)
    bg_client.post("/explode")

def test_own_call(app, bg_client):
    app.post("/own")(lambda: JSONResponse({}, background=OwnCall(explode, 2)))
    bg_client.post("/own")

@pytest.mark.bgtasks(mode="defer")
def test_deferred(bg_client, bgtasks):
    bg_client.post("/explode")
    bgtasks.run_deferred()

@pytest.mark.anyio
@pytest.mark.bgtasks(mode="defer")
async def test_deferred_async(app, bgtasks):
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/explode")
    await bgtasks.arun_deferred()
"""


@pytest.mark.parametrize("style", ["short", "long"])
def test_a_failing_task_shows_its_own_frames_and_none_of_the_plugin(
    pytester: pytest.Pytester, style: str
) -> None:
    make_tests(pytester, TASK_FAILURES)
    result = pytester.runpytest(f"--tb={style}")
    result.assert_outcomes(failed=7)
    lines = result.stdout.lines
    plugin_frames = [line for line in lines if re.search(r"pytest_bgtasks[/\\]\w+", line)]
    assert plugin_frames == []
    # The frame of each task, or of the fake that ran in its place, is there.
    own = [line for line in lines if re.fullmatch(r">?\s+raise ZeroDivisionError\(value\)", line)]
    assert len(own) == 7
    if style == "short":
        functions = re.findall(r"^\S+\.py:\d+: in (\w+)$", result.stdout.str(), re.M)
        tasks = [name for name in functions if "explode" in name]
        # by test: sync, async, replaced, replaced_async, own_call, deferred, deferred_async
        assert sorted(tasks) == sorted(
            ["explode", "explode_async", "fake_explode", "fake_explode_async"] + ["explode"] * 3
        )


@pytest.mark.parametrize("fixture", ["bg_client", "bg_client_factory"])
@pytest.mark.parametrize("name", ["app", "api"])
def test_bg_client_needs_an_app_fixture(pytester: pytest.Pytester, fixture: str, name: str) -> None:
    pytester.makepyfile(
        f"""
        def test_it({fixture}):
            pass
        """
    )
    if name != "app":
        pytester.makeini(f"[pytest]\nbgtasks_app_fixture = {name}\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    message = (
        f"{fixture} needs a fixture named {name!r} that returns your ASGI app; define one in "
        "conftest.py, or name yours with the ini option bgtasks_app_fixture."
    )
    result.stdout.fnmatch_lines(["*_ ERROR at setup of test_it _*", message])
    assert_shown_once(result, message)
    manual.assert_listed(message)


def test_bg_client_uses_the_fixture_the_ini_names(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import contextlib
        import pytest
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        started = []

        @pytest.fixture
        def api():
            async def hello(request):
                return PlainTextResponse("hello")

            @contextlib.asynccontextmanager
            async def lifespan(app):
                started.append(True)
                yield

            return Starlette(routes=[Route("/", hello)], lifespan=lifespan)

        def test_it(bg_client, bgtasks):
            assert bg_client.get("/").text == "hello"
            assert started == [True]  # entered as a context manager: lifespan ran
            bgtasks.assert_no_tasks()
        """
    )
    pytester.makeini("[pytest]\nbgtasks_app_fixture = api\n")
    pytester.runpytest().assert_outcomes(passed=1)


FACTORY = """
import contextlib
import pytest
from fastapi import BackgroundTasks, FastAPI, Request
from starlette.testclient import TestClient
from pytest_bgtasks import TaskRequest, TaskStatus
from conftest import explode, send_welcome_email

events = []

@pytest.fixture
def app():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("start")
        yield
        events.append("stop")

    events.clear()
    app = FastAPI(lifespan=lifespan)

    @app.get("/echo")
    def echo(request: Request, background_tasks: BackgroundTasks):
        background_tasks.add_task(send_welcome_email, request.headers.get("x-user"))
        return {"url": str(request.url), "user": request.headers.get("x-user")}

    @app.post("/explode")
    def explode_later(background_tasks: BackgroundTasks):
        background_tasks.add_task(explode, "in the background")  # explode
        return {}

    @app.post("/broken")
    def broken():
        raise ZeroDivisionError("in the endpoint")

    return app

def test_options_reach_the_app(bg_client_factory, bgtasks):
    client = bg_client_factory(base_url="https://api.example", headers={"x-user": "ada"})
    assert isinstance(client, TestClient)
    assert client.get("/echo").json() == {"url": "https://api.example/echo", "user": "ada"}
    record = bgtasks.assert_task_ran(send_welcome_email, "ada")
    assert record.request == TaskRequest("GET", "/echo")

@pytest.mark.bgtasks(allow_failures=True)
def test_server_exceptions_as_responses(bg_client_factory, bgtasks):
    client = bg_client_factory(raise_server_exceptions=False)
    assert client.post("/broken").status_code == 500
    # A task runs after its response is sent: the client has its 200, the record the error.
    assert client.post("/explode").status_code == 200
    record = bgtasks.assert_task_failed(explode)
    assert isinstance(record.exception, ZeroDivisionError)

def test_server_exceptions_hidden_are_reported(bg_client_factory):
    assert bg_client_factory(raise_server_exceptions=False).post("/explode").status_code == 200

def test_each_client_runs_lifespan(bg_client_factory, bg_client):
    assert events == ["start"]
    first, second = bg_client_factory(), bg_client_factory(headers={"x-user": "bob"})
    assert first is not second and bg_client not in (first, second)
    assert events == ["start"] * 3
    assert second.get("/echo").json()["user"] == "bob"

def test_every_client_was_closed():
    assert events == ["start"] * 3 + ["stop"] * 3

def test_the_app_comes_from_the_fixture(bg_client_factory, app):
    bg_client_factory(app=app)
"""


def test_bg_client_factory_makes_clients_with_options(pytester: pytest.Pytester) -> None:
    make_tests(pytester, FACTORY)
    result = pytester.runpytest("--tb=short")
    result.assert_outcomes(passed=5, failed=1, errors=1)
    lines = (pytester.path / "test_it.py").read_text().splitlines()
    explode = next(n for n, line in enumerate(lines, start=1) if "# explode" in line)
    message = (
        "bg_client_factory() takes the app from the fixture 'app', not app=: pass only "
        "TestClient's other options (base_url, headers, raise_server_exceptions...)."
    )
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_server_exceptions_hidden_are_reported _*",
            "1 background task raised and the test never saw the exception (the client or a "
            "middleware hid it):",
            f"- explode('in the background') [failed] POST /explode  (test_it.py:{explode})",
            "*_ test_the_app_comes_from_the_fixture _*",
            "test_it.py:*: in test_the_app_comes_from_the_fixture",
            "    bg_client_factory(app=app)",
            f"E   TypeError: {message}",
        ]
    )
    manual.assert_listed(message)


def test_a_missing_fixture_inside_app_is_reported_as_usual(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def app(database):
            return None

        def test_it(bg_client):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'database' not found*"])


UNTOUCHED = """
import atexit, sys

def _report():
    from starlette.background import BackgroundTask, BackgroundTasks
    from starlette.applications import Starlette
    patched = [
        f"{owner.__name__}.{name}"
        for owner, name in [
            (BackgroundTask, "__init__"), (BackgroundTask, "__call__"),
            (BackgroundTasks, "__init__"), (BackgroundTasks, "add_task"),
            (Starlette, "__call__"),
        ]
        if hasattr(owner.__dict__[name], "__wrapped__")
    ]
    print("patched at exit:", ", ".join(patched) or "none")

atexit.register(_report)

def pytest_sessionfinish(session):
    from importlib.metadata import entry_points

    [entry] = [e for e in entry_points(group="pytest11") if e.name == "bgtasks"]
    beyond = [m for m in sys.modules if m.startswith("pytest_bgtasks.") and m != entry.value]
    print("plugin modules beyond its entry point:", len(beyond))
    print("starlette imported:", "starlette" in sys.modules)
"""


@pytest.mark.slow
def test_a_session_that_never_uses_the_plugin_imports_and_patches_nothing(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(UNTOUCHED)
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest_subprocess("-s", "-p", "no:pytester")
    result.assert_outcomes(passed=1)
    # The entry point, and at most the one module its options need: none of the core.
    result.stdout.re_match_lines(
        [
            r".*plugin modules beyond its entry point: [01]$",
            "starlette imported: False",
            "patched at exit: none",
        ]
    )


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_it(bgtasks):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:bgtasks")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'bgtasks' not found*"])
    assert "bgtasks: mode" not in result.stdout.str()


def test_the_report_hook_is_registered_once_by_name(
    request: pytest.FixtureRequest, bgtasks: BackgroundTaskCapture
) -> None:
    manager = request.config.pluginmanager
    assert manager.get_plugin("bgtasks-reports") is not None
    names = [name for name, _ in manager.list_name_plugin() if name == "bgtasks-reports"]
    assert names == ["bgtasks-reports"]


HANGS = """
import anyio
import pytest
from fastapi import BackgroundTasks, FastAPI
from starlette.testclient import TestClient

async def hang():
    await anyio.sleep_forever()

app = FastAPI()

@app.post("/hang")
def route(background_tasks: BackgroundTasks):
    background_tasks.add_task(hang)
    return {}

@pytest.mark.bgtasks(mode="defer")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_hang(bgtasks, backend):
    with TestClient(app, backend=backend) as client:
        client.post("/hang")
        bgtasks.run_deferred(timeout=0.05)  # on the client's loop, still running
"""


@pytest.mark.parametrize("style", ["short", "long"])
def test_a_deferred_task_timed_out_on_the_clients_loop_shows_none_of_the_plugin(
    pytester: pytest.Pytester, style: str
) -> None:
    pytester.makepyfile(test_it=HANGS)
    result = pytester.runpytest(f"--tb={style}", "-p", "no:randomly")
    result.assert_outcomes(failed=2)
    lines = result.stdout.lines
    assert [line for line in lines if re.search(r"pytest_bgtasks[/\\]\w+", line)] == []
    errors = [line.removeprefix("E").strip() for line in lines if line.startswith("E ")]
    where = "test_it.py:13"  # the add_task line
    assert (
        errors
        == [f"TimeoutError: Deferred task hang() ({where}) did not finish within 0.05 seconds."] * 2
    )
