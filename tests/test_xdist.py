"""The plugin beside pytest-xdist, pytest-randomly and pytest-timeout, each run in a pytest
process of its own: records never leak between tests or workers, in any order, and a failing
test's "Captured background tasks" section reaches the controller whole."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # each test starts a pytest process

APP = """
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

done = []

def deliver(order):
    done.append(order)

async def order(request):
    number = int(request.path_params["number"])
    return PlainTextResponse("ok", background=BackgroundTask(deliver, number))

@pytest.fixture(scope="module")
def app():
    return Starlette(routes=[Route("/orders/{number:int}", order, methods=["POST"])])

@pytest.fixture(scope="module")
def shared_client(app):
    with TestClient(app) as client:
        yield client
"""

TESTS = """
import os

import pytest
from conftest import deliver, done
from starlette.testclient import TestClient

from pytest_bgtasks import TaskRequest, TaskStatus, assert_task_ran


def own_record(bgtasks, number, status):
    # Exactly this test's one task: a record left by another test would show up here.
    (record,) = bgtasks.tasks
    assert (record.func, record.args) == (deliver, (number,))
    assert record.request == TaskRequest("POST", f"/orders/{number}")
    assert record.status is status
    return record


@pytest.mark.parametrize("number", range(12))
def test_records_its_own_task(bg_client, bgtasks, number):
    bg_client.post(f"/orders/{number}")
    own_record(bgtasks, number, TaskStatus.RAN)


@pytest.mark.parametrize("number", range(100, 106))
@pytest.mark.bgtasks(mode="defer")
def test_leaves_its_task_deferred(bg_client, bgtasks, number):
    bg_client.post(f"/orders/{number}")
    own_record(bgtasks, number, TaskStatus.DEFERRED)
    assert number not in done


@pytest.mark.parametrize("number", range(200, 206))
def test_on_a_client_shared_by_the_module(shared_client, bgtasks, number):
    shared_client.post(f"/orders/{number}")
    own_record(bgtasks, number, TaskStatus.RAN)


@pytest.mark.parametrize("number", range(300, 306))
def test_without_capture(app, number):
    with TestClient(app) as client:
        client.post(f"/orders/{number}")
    assert number in done


def test_fails_on_a_worker(bg_client):
    bg_client.post("/orders/999")
    assert_task_ran(deliver, 1000)
"""

PASSING = 12 + 6 + 6 + 6
PLUGINS_OFF = "-p no:hypothesispytest -p no:asyncio"
"""The child sessions below run with the other plugins of the test extra, as installed."""


def make_project(pytester: pytest.Pytester) -> int:
    """The project's files; returns the line of conftest.py that creates each task."""
    pytester.makeconftest(APP)
    pytester.makepyfile(test_orders=TESTS)
    lines = APP.splitlines()
    return next(n for n, line in enumerate(lines) if "BackgroundTask(deliver" in line)


def expect_the_failure_report(result: pytest.RunResult, site: int) -> None:
    result.assert_outcomes(passed=PASSING, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_fails_on_a_worker _*",
            "E       AssertionError: No background task matching deliver(1000) ran.",
            "*- Captured background tasks -*",
            "POST /orders/999, answered with 200",
            f"  - deliver(999)  ran  conftest.py:{site}",
        ]
    )


@pytest.mark.parametrize(("workers", "seed"), [("2", "1"), ("4", "2")])
def test_under_xdist_in_random_order_with_a_timeout(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: str, seed: str
) -> None:
    site = make_project(pytester)
    monkeypatch.setenv("PYTEST_ADDOPTS", PLUGINS_OFF)  # pytest-randomly and xdist on
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", workers, f"--randomly-seed={seed}", "--timeout=60"
    )
    result.stdout.fnmatch_lines(
        [f"Using --randomly-seed={seed}", "timeout: 60.0s", f"created: {workers}/{workers} workers"]
    )
    expect_the_failure_report(result, site)


def test_in_random_order_in_one_process(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_project(pytester)
    monkeypatch.setenv("PYTEST_ADDOPTS", PLUGINS_OFF)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--randomly-seed=3")
    result.stdout.fnmatch_lines(["Using --randomly-seed=3"])
    expect_the_failure_report(result, site)


def test_a_test_that_times_out_keeps_its_records_and_the_next_starts_clean(
    pytester: pytest.Pytester,
) -> None:
    # The plugin's core is loaded (a capture started and stopped) before the one-second limit
    # runs: a slow import (a mutated copy of the core, under mutation testing) is not the hang
    # this test is about.
    pytester.makeconftest(
        "from pytest_bgtasks import BackgroundTaskCapture\n"
        "with BackgroundTaskCapture():\n    pass\n" + APP
    )
    pytester.makepyfile(
        test_hang="""
        import anyio
        import pytest
        from starlette.applications import Starlette
        from starlette.background import BackgroundTask
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient

        from pytest_bgtasks import TaskStatus

        async def wait_forever():
            await anyio.sleep_forever()

        async def hang(request):
            return PlainTextResponse("ok", background=BackgroundTask(wait_forever))

        @pytest.mark.timeout(1)
        @pytest.mark.bgtasks(mode="defer")
        def test_hangs(bgtasks):
            with TestClient(Starlette(routes=[Route("/hang", hang)])) as client:
                client.get("/hang")
            bgtasks.run_deferred()  # on a new event loop, until pytest-timeout stops it

        def test_next(bg_client, bgtasks):
            bg_client.post("/orders/1")
            (record,) = bgtasks.tasks
            assert record.status is TaskStatus.RAN
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_hangs _*",
            "E*Failed: Timeout*",
            "*- Captured background tasks -*",
            "GET /hang, answered with 200",
            "  - wait_forever()  cancelled  test_hang.py:15",
            "      cancelled while running",
        ]
    )
