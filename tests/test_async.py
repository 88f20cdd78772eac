"""Async tests under each framework a user may run them with: pytest-asyncio in strict and in
auto mode, and anyio's pytest plugin on asyncio and on trio (the app then runs on trio too).
Each runs the same suite in its own pytest process, with `httpx.AsyncClient` and
`ASGITransport`: tasks run, and deferred ones are run by `await bgtasks.arun_deferred()`, on
the test's own event loop; the sync `run_deferred()` there is an error that names the async one.
"""

from __future__ import annotations

import pytest

APP = """
import asyncio

import httpx
import pytest
import sniffio
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.responses import PlainTextResponse
from starlette.routing import Route

seen = []


def current_loop():
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    return asyncio.get_running_loop()


async def remember_loop(tag):
    seen.append((tag, current_loop()))


def in_a_thread(tag):
    seen.append((tag, "thread"))


async def work(request):
    tag = request.query_params["tag"]
    tasks = BackgroundTasks()
    tasks.add_task(remember_loop, tag)
    tasks.add_task(in_a_thread, tag)
    return PlainTextResponse("accepted", background=tasks)


app = Starlette(routes=[Route("/work", work, methods=["POST"])])


@{fixture}
async def client():
    seen.clear()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
"""

TESTS = """
import pytest
from conftest import current_loop, in_a_thread, remember_loop, seen

from pytest_bgtasks import TaskRequest, TaskStatus, assert_task_ran

pytestmark = [{marks}]


async def test_tasks_run_on_the_tests_loop(client, bgtasks):
    assert (await client.post("/work?tag=now")).status_code == 200
    assert seen == [("now", current_loop()), ("now", "thread")]
    record = assert_task_ran(remember_loop, "now")
    assert record.request == TaskRequest("POST", "/work")


@pytest.mark.bgtasks(mode="defer")
async def test_arun_deferred_runs_held_tasks_on_the_tests_loop(client, bgtasks):
    await client.post("/work?tag=later")
    assert seen == []
    ran = await bgtasks.arun_deferred()
    assert [record.func for record in ran] == [remember_loop, in_a_thread]
    assert [record.status for record in ran] == [TaskStatus.RAN, TaskStatus.RAN]
    assert seen == [("later", current_loop()), ("later", "thread")]


@pytest.mark.bgtasks(mode="defer")
async def test_the_sync_run_deferred_points_to_the_async_one(client, bgtasks):
    await client.post("/work?tag=later")
    with pytest.raises(RuntimeError) as raised:
        bgtasks.run_deferred()
    assert str(raised.value) == (
        "bgtasks.run_deferred() was called from a running event loop; "
        "in async tests use `await bgtasks.arun_deferred()`."
    )
    assert bgtasks.deferred == bgtasks.tasks  # nothing ran
    assert await bgtasks.arun_deferred(only=in_a_thread) == [bgtasks.tasks[1]]
    assert seen == [("later", "thread")]
    bgtasks.mode = "skip"  # what is left stays unrun, as the test says


async def test_a_failing_async_test_lists_its_tasks(client, bgtasks):
    await client.post("/work?tag=reported")
    raise AssertionError("the test's own failure")
"""

FRAMEWORKS = {
    # name: (command-line options, fixture decorator, test marks)
    "pytest-asyncio-strict": (
        ["-o", "asyncio_mode=strict"],
        "pytest_asyncio.fixture",
        "pytest.mark.asyncio",
    ),
    "pytest-asyncio-auto": (["-o", "asyncio_mode=auto"], "pytest.fixture", ""),
    "anyio-asyncio": (["-p", "no:asyncio"], "pytest.fixture", "pytest.mark.anyio"),
    "anyio-trio": (["-p", "no:asyncio"], "pytest.fixture", "pytest.mark.anyio"),
}


@pytest.mark.slow
@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_async_tests_under(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, framework: str
) -> None:
    options, fixture, marks = FRAMEWORKS[framework]
    conftest = "import pytest_asyncio\n" + APP.replace("{fixture}", fixture)
    if framework.startswith("anyio"):
        backend = framework.split("-")[1]
        conftest += f"\n\n@pytest.fixture\ndef anyio_backend():\n    return {backend!r}\n"
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_async_app=TESTS.replace("{marks}", marks))
    # pytest-asyncio is on unless the options above turn it off.
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:xdist -p no:randomly")

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *options)

    result.assert_outcomes(passed=3, failed=1)
    lines = conftest.splitlines()
    first = lines.index("    tasks.add_task(remember_loop, tag)") + 1
    result.stdout.fnmatch_lines(
        [
            "*_ test_a_failing_async_test_lists_its_tasks _*",
            "*- Captured background tasks -*",
            "POST /work, answered with 200",
            f"  - remember_loop('reported')  ran  conftest.py:{first}",
            f"  - in_a_thread('reported')    ran  conftest.py:{first + 1}",
        ]
    )
    plugins = next(line for line in result.stdout.lines if line.startswith("plugins: "))
    assert ("asyncio-" in plugins) is framework.startswith("pytest-asyncio")
