"""A test's records, and the event loops its held tasks wait on, go with the test: the report
keeps their text, nothing keeps the records."""

from __future__ import annotations

import pytest

CONFTEST = """
import gc
import tracemalloc

import pytest

held = {}


def pytest_sessionstart(session):
    tracemalloc.start()


def pytest_runtest_logfinish(nodeid, location):
    gc.collect()
    held[nodeid.rsplit("::", 1)[1]] = tracemalloc.get_traced_memory()[0]


def pytest_sessionfinish(session):
    grown = held["test_many"] - held["test_warm_up"]
    print(f"\\nheld after the test: {grown} bytes")
"""

TESTS = """
import pytest
from fastapi import BackgroundTasks, FastAPI
from starlette.testclient import TestClient

TASKS = 100_000
kept = []


async def job(number):
    pass


def post(count):
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks):
        for number in range(count):
            background_tasks.add_task(job, number)
        return {{}}

    with TestClient(app) as client:
        client.post("/work")


@pytest.mark.bgtasks(mode={mode!r})
def test_warm_up(bgtasks):
    post(10)
    assert len(bgtasks.tasks) == 10


@pytest.mark.bgtasks(mode={mode!r})
def test_many(bgtasks):
    post(TASKS)
    assert len(bgtasks.tasks) == TASKS
    if {keep}:  # what the plugin must not do: keep the capture past its test
        kept.append(bgtasks)
"""


def held_after(pytester: pytest.Pytester, mode: str, *, keep: bool) -> int:
    """Bytes still held after a test that scheduled 100,000 tasks, over those held after a
    test that scheduled ten."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TESTS.format(mode=mode, keep=keep))
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    (line,) = [line for line in result.stdout.lines if line.startswith("held after the test: ")]
    return int(line.split()[-2])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["run", "defer"])
def test_a_test_that_scheduled_100000_tasks_leaves_less_than_2_mb_behind(
    pytester: pytest.Pytester, mode: str
) -> None:
    assert held_after(pytester, mode, keep=False) < 2_000_000


@pytest.mark.slow
def test_the_measure_sees_records_kept_past_their_test(pytester: pytest.Pytester) -> None:
    assert held_after(pytester, "run", keep=True) > 20_000_000
