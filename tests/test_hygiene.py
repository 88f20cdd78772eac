"""The plugin leaves Starlette as it found it, shares it with other wrappers, and stays
inert when nothing captures."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.testclient import TestClient

import apps
import pytest_bgtasks
from apps import sync_job
from pytest_bgtasks import (
    BackgroundTaskCapture,
    TaskStatus,
    _recorder,
    _starlette,
    assert_task_count,
)


def current_call() -> Any:
    return BackgroundTask.__dict__["__call__"]


def set_call(func: Any) -> None:
    """Put `func` in BackgroundTask.__call__'s place, as another library would."""
    BackgroundTask.__call__ = func  # type: ignore[method-assign]  # replacing it is the point


@pytest.fixture
def pristine() -> Iterator[Any]:
    """Starlette without the plugin's patches for the test; the session's state afterwards."""
    _starlette.uninstall()
    original = current_call()
    assert not hasattr(original, "__wrapped__")
    yield original
    _starlette.uninstall()
    set_call(original)


def instrument(log: list[str]) -> Callable[[Any], Any]:
    """An instrumentation-style wrapper of BackgroundTask.__call__, as tracing libraries do."""
    wrapped = current_call()

    @functools.wraps(wrapped)
    async def traced(self: Any) -> None:
        log.append(f"start {self.func.__name__}")
        await wrapped(self)
        log.append(f"end {self.func.__name__}")

    set_call(traced)
    return traced


def run_one_request() -> None:
    with TestClient(apps.fastapi_app((sync_job, ("a",)))) as client:
        client.post("/work")


@pytest.mark.parametrize("order", ["wrapper-first", "plugin-first"])
def test_another_wrapper_of_the_call_keeps_working_and_so_does_the_plugin(
    pristine: Any, order: str
) -> None:
    log: list[str] = []
    if order == "wrapper-first":
        instrument(log)
    with BackgroundTaskCapture() as capture:
        if order == "plugin-first":
            instrument(log)
        run_one_request()
    capture.assert_task_ran(sync_job, "a")
    assert log == ["start sync_job", "end sync_job"]
    assert apps.ran == [("sync_job", "a")]

    # Once the session ends, the plugin restores what is still its own and leaves the rest.
    _starlette.uninstall()
    run_one_request()
    assert log == ["start sync_job", "end sync_job"] * 2
    if order == "wrapper-first":
        assert current_call().__wrapped__ is pristine
    else:  # ours is under the other wrapper now: it stays, inert
        assert getattr(current_call().__wrapped__, "__pytest_bgtasks_patch__", False)

    # A later session captures again, through the other wrapper, and records each task once.
    with BackgroundTaskCapture() as again:
        run_one_request()
    (record,) = again.tasks
    assert record.status is TaskStatus.RAN
    assert log == ["start sync_job", "end sync_job"] * 3
    assert apps.ran == [("sync_job", "a")] * 3


def test_patches_are_installed_once_and_removed_completely(pristine: Any) -> None:
    assert _starlette.install() is True
    assert _starlette.install() is False
    assert getattr(current_call(), "__pytest_bgtasks_patch__", False)
    _starlette.uninstall()
    assert current_call() is pristine
    assert not _starlette._originals


def test_a_stale_copy_of_the_patches_is_replaced_not_stacked(pristine: Any) -> None:
    _starlette.install()
    # What pytester does between in-process runs: the module is imported afresh, so its
    # record of what it patched is empty while the patches are still in place.
    _starlette._originals.clear()
    _starlette._wrappers.clear()
    _starlette.install()
    assert current_call().__wrapped__ is pristine


def test_a_patch_something_put_back_is_installed_again(pristine: Any) -> None:
    _starlette.install()
    set_call(pristine)  # restored by someone
    assert _starlette.install() is True  # the others were still in place
    assert current_call().__wrapped__ is pristine
    with BackgroundTaskCapture() as capture:
        run_one_request()
    capture.assert_task_ran(sync_job, "a")


def wrapped_over(inner: Any, depth: int) -> Any:
    """`inner` under `depth` instrumentation wrappers."""
    for _ in range(depth):

        @functools.wraps(inner)
        async def outer(self: Any, inner: Any = inner) -> None:
            await inner(self)

        inner = outer
    return inner


def test_the_patch_is_looked_for_under_at_most_32_wrappers(pristine: Any) -> None:
    _starlette.install()
    patch = current_call()
    set_call(wrapped_over(patch, 31))
    assert _starlette.install() is False  # found under them
    set_call(wrapped_over(patch, 32))
    assert _starlette.install() is True  # not looked for that deep: patched again, on top
    _starlette.uninstall()


def test_a_wrapper_whose_wrapped_chain_loops_is_not_the_plugins(pristine: Any) -> None:
    async def looping(self: Any) -> None:
        await pristine(self)

    functools.update_wrapper(looping, looping)  # its __wrapped__ is itself
    set_call(looping)
    with BackgroundTaskCapture() as capture:
        run_one_request()
    capture.assert_task_ran(sync_job, "a")
    assert current_call().__wrapped__ is looping


def test_a_recorder_of_its_own_records_and_lets_go(pristine: Any) -> None:
    # A fresh import of the core (pytester's in-process runs) makes a recorder of its own.
    recorder = _recorder.Recorder()
    capture = BackgroundTaskCapture()
    recorder.push(capture)
    try:
        run_one_request()
    finally:
        recorder.pop(capture)
    (record,) = capture.tasks
    assert record.status is TaskStatus.RAN
    assert (recorder.logs, recorder.records, recorder.by_task) == ([], [], {})


def test_a_coroutine_object_that_never_ran_is_closed_when_the_capture_ends(
    pristine: Any,
) -> None:
    with BackgroundTaskCapture() as capture:
        batch = BackgroundTasks()
        coroutine = apps.async_job("never sent")
        batch.add_task(coroutine)  # type: ignore[arg-type]  # the misuse under test
        assert len(capture.tasks) == 1
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED
    # Nothing will ever await it: closed, so Python does not warn "never awaited" in some later
    # test when it is collected.
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


def test_the_public_names_load_from_their_modules() -> None:
    from pytest_bgtasks import _capture, _matching, _records, plugin

    homes = {
        "BackgroundTaskWarning": plugin,
        "ExpectedTask": _matching,
        "task": _matching,
        "TaskRecord": _records,
        "TaskRequest": _records,
        "TaskStatus": _records,
    }
    for name in pytest_bgtasks.__all__:
        assert getattr(pytest_bgtasks, name) is getattr(homes.get(name, _capture), name)
    assert set(pytest_bgtasks.__all__) <= set(dir(pytest_bgtasks))
    with pytest.raises(AttributeError) as error:
        pytest_bgtasks.assert_taks_added  # noqa: B018
    assert str(error.value) == "module 'pytest_bgtasks' has no attribute 'assert_taks_added'"


def test_the_patches_are_inert_without_a_capture(pristine: Any) -> None:
    with BackgroundTaskCapture(mode="skip") as earlier:
        run_one_request()
    assert apps.ran == []
    assert getattr(current_call(), "__pytest_bgtasks_patch__", False)  # still installed

    run_one_request()
    assert apps.ran == [("sync_job", "a")]  # the earlier capture's mode is gone with it
    with (
        pytest.raises(ZeroDivisionError, match=r"^boom now$"),
        TestClient(apps.fastapi_app((apps.boom, ("now",)))) as client,
    ):
        client.post("/work")  # a task's exception reaches the client as without the plugin
    assert len(earlier.tasks) == 1
    assert _recorder.recorder.logs == []
    assert _recorder.recorder.by_task == {}


def test_the_recorder_ignores_what_arrives_after_the_last_capture_stopped() -> None:
    # A server thread can report a task just after the test's capture stopped.
    task = BackgroundTask(sync_job, "late")
    misused = BackgroundTask(42)  # type: ignore[arg-type]  # what a record would report
    recorder = _recorder.recorder
    recorder.task_created(task, None, None)
    recorder.task_created(misused, None, None)
    assert recorder.record(task) is recorder.record(misused) is None
    anyio.run(recorder.task_called, task)
    assert apps.ran == [("sync_job", "late")]


def test_a_block_keeps_its_records_after_the_capture_stops(
    bgtasks: BackgroundTaskCapture,
) -> None:
    with bgtasks.capture() as block:
        BackgroundTask(sync_job, "in block")
        bgtasks.stop()
        BackgroundTask(sync_job, "after stop")  # only the block is left: it still records
    bgtasks.start()
    assert [record.call for record in block.tasks] == [
        "sync_job('in block')",
        "sync_job('after stop')",
    ]
    assert [record.call for record in bgtasks.tasks] == ["sync_job('in block')"]


def test_stopping_twice_is_harmless(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.stop()
    bgtasks.stop()
    bgtasks.start()
    BackgroundTask(sync_job, "x")
    assert len(bgtasks.tasks) == 1


def test_nested_captures_each_keep_their_own_records(bgtasks: BackgroundTaskCapture) -> None:
    def post(value: str) -> None:
        with TestClient(apps.fastapi_app((sync_job, (value,)))) as client:
            client.post("/work")

    post("outer")
    with bgtasks.capture() as block:
        post("block")
        with bgtasks.capture() as inner:
            post("inner")
            # A block records; the capture around it still decides and answers free helpers.
            assert_task_count(3)
        with BackgroundTaskCapture(mode="skip") as separate:
            post("separate")
            assert_task_count(1)  # the innermost capture answers now
    post("after")

    def calls(log: Any) -> list[str]:
        return [record.call for record in log.tasks]

    assert calls(bgtasks) == [
        f"sync_job({v!r})" for v in ("outer", "block", "inner", "separate", "after")
    ]
    assert calls(block) == ["sync_job('block')", "sync_job('inner')", "sync_job('separate')"]
    assert calls(inner) == ["sync_job('inner')"]
    assert calls(separate) == ["sync_job('separate')"]
    # One record per task, shared by every capture that saw it, indexed in the outermost one.
    assert inner.tasks[0] is block.tasks[1] is bgtasks.tasks[2]
    assert [record.index for record in block.tasks] == [1, 2, 3]
    # The separate capture decided about its task: skipped; the others ran.
    assert [record.status for record in bgtasks.tasks] == [TaskStatus.RAN] * 3 + [
        TaskStatus.SKIPPED,
        TaskStatus.RAN,
    ]
    inner.assert_task_not_added(sync_job, "block")
    block.assert_task_not_added(sync_job, "outer")
    separate.assert_task_count(1)


def test_a_batch_built_from_tasks_made_before_the_capture(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.stop()
    early = BackgroundTask(sync_job, "early")
    bgtasks.start()
    batch = BackgroundTasks([early, BackgroundTask(boom_now := apps.boom, "late")])
    with pytest.raises(ZeroDivisionError):
        anyio.run(batch)
    first, second = bgtasks.tasks[-1], bgtasks.failed[0]
    assert second.func is boom_now
    assert first.call == "sync_job('early')"
    assert first.status is TaskStatus.RAN


# -- whole sessions ----------------------------------------------------------------------------

SESSION_CHECK = """
import json
import os

import pytest
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask, BackgroundTasks as StarletteBackgroundTasks

from pytest_bgtasks import _starlette

originals = {}
patched_during_the_session = set()


def attributes():
    # What the plugin patches, and what it must leave alone.
    watched = [(owner, name) for owner, name, _ in _starlette._targets()]
    watched += [(StarletteBackgroundTasks, "add_task"), (StarletteBackgroundTasks, "__call__")]
    return {f"{getattr(owner, '__name__', owner)}.{name}": (owner, name) for owner, name in watched}


def current(owner, name):
    return owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)


def changed():
    return sorted(
        label for label, (owner, name) in attributes().items()
        if current(owner, name) is not originals[label]
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Before the plugin does anything (it patches at the first capture), and registered before
    # its own cleanup, so that `report` runs after it (cleanups run last in, first out).
    for label, (owner, name) in attributes().items():
        originals[label] = current(owner, name)
    config.add_cleanup(lambda: report(config))


def pytest_runtest_logreport(report):
    patched_during_the_session.update(changed())


def report(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (config.rootpath / f"session-{worker}.json").write_text(json.dumps({
        "watched": sorted(originals),
        "patched during the session": sorted(patched_during_the_session),
        "changed at the end": changed(),
    }))


done = []


def job(value):
    done.append(value)


@pytest.fixture
def app():
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks):
        background_tasks.add_task(job, "x")
        return {}

    @app.post("/own-background")
    def own_background(background_tasks: BackgroundTasks):
        background_tasks.add_task(job, "dropped")
        return JSONResponse({}, background=BackgroundTask(job, "carried"))

    return app
"""

SESSION_TESTS = """
import pytest
from starlette.testclient import TestClient

from starlette.background import BackgroundTask

from conftest import done, job
from pytest_bgtasks import BackgroundTaskCapture, _recorder


@pytest.fixture(autouse=True)
def _empty_done():
    done.clear()


def test_uses_the_plugin(bg_client, bgtasks):
    bg_client.post("/work")
    bgtasks.assert_task_ran(job, "x")


def test_fails_inside_a_block(bg_client, bgtasks):
    with bgtasks.capture():
        bg_client.post("/work")
        raise RuntimeError("a failing test")


@pytest.fixture
def broken_at_setup(bgtasks):
    raise RuntimeError("a fixture that errors at setup")


def test_fixture_errors_at_setup(broken_at_setup):
    pass


@pytest.fixture
def broken_at_teardown(bgtasks):
    yield
    raise RuntimeError("a fixture that errors at teardown")


def test_fixture_errors_at_teardown(bg_client, broken_at_teardown):
    bg_client.post("/work")


def test_the_plugin_complains_at_teardown(bg_client):
    bg_client.post("/own-background")  # a dropped task


def test_the_core_alone_then_inert_patches(app):
    with BackgroundTaskCapture(mode="skip") as capture, TestClient(app) as client:
        client.post("/work")
    assert done == []
    # Capture stopped: the patches stay for the session, and neither record nor change a thing.
    assert hasattr(BackgroundTask.__dict__["__call__"], "__wrapped__")
    with TestClient(app) as client:
        client.post("/work")
    assert done == ["x"]
    assert len(capture.tasks) == 1
    assert _recorder.recorder.logs == []


def test_leaves_a_capture_running(app):
    capture = BackgroundTaskCapture(mode="skip")
    capture.start()
    with TestClient(app) as client:
        client.post("/work")
    assert len(capture.tasks) == 1
"""


def session_reports(pytester: pytest.Pytester) -> dict[str, dict[str, list[str]]]:
    return {
        path.stem.removeprefix("session-"): json.loads(path.read_text())
        for path in sorted(pytester.path.glob("session-*.json"))
    }


def targets() -> list[str]:
    """What the plugin patches (as the session check names it): Starlette's execution choke
    point and where tasks are created, requests, and the exception-handler lookup."""
    names = sorted(
        f"{getattr(owner, '__name__', owner)}.{name}" for owner, name, _ in _starlette._targets()
    )
    assert {"BackgroundTask.__call__", "BackgroundTask.__init__", "Starlette.__call__"} <= set(
        names
    )
    assert any(name.endswith("._lookup_exception_handler") for name in names)
    return names


@pytest.mark.parametrize(
    ("args", "outcomes"),
    [
        ([], {"passed": 5, "failed": 1, "errors": 3}),
        (["-x"], {"passed": 1, "failed": 1}),
        (["-p", "xdist", "-n", "2", "-k", "not leaves"], {"passed": 4, "failed": 1, "errors": 3}),
        (["-k", "core_alone"], {"passed": 1, "deselected": 6}),
    ],
    ids=["failures-and-errors", "stopped-by-x", "xdist", "core-without-fixture"],
)
@pytest.mark.slow
def test_starlette_is_as_it_was_after_a_session(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    outcomes: dict[str, int],
) -> None:
    """Whatever happened in the session (failing tests, erroring fixtures, teardown
    complaints, a capture left running, a run stopped early, xdist workers), every attribute
    the plugin patches is the original object again once it ends."""
    pytester.makeconftest(SESSION_CHECK)
    pytester.makepyfile(test_session=SESSION_TESTS)
    # xdist allowed here; pytest-randomly would reorder what -x stops after.
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest -p no:randomly -p no:asyncio")
    # When this suite itself runs under xdist, its worker's name is not the child session's.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(**outcomes)

    reports = session_reports(pytester)
    workers = {"gw0", "gw1"} if "xdist" in args else set()
    assert set(reports) == {"main", *workers}
    for name, report in reports.items():
        assert report["watched"] == sorted(
            [*targets(), "BackgroundTasks.__call__", "BackgroundTasks.add_task"]
        )
        # The check can fail: the patches were in place while the tests ran...
        if name in workers or not workers:
            assert report["patched during the session"] == targets(), name
        else:  # the xdist controller runs no test: it never patches
            assert report["patched during the session"] == [], name
        # ...and are gone at the end.
        assert report["changed at the end"] == [], name


@pytest.mark.slow
def test_a_wrapper_left_on_top_of_the_plugin_is_left_as_it_is(pytester: pytest.Pytester) -> None:
    """The session check sees what is not restored: an instrumentation wrapper installed over
    the plugin's patch and never removed keeps the plugin's patch (inert) under it."""
    pytester.makeconftest(SESSION_CHECK)
    pytester.makepyfile(
        """
        import functools
        from starlette.background import BackgroundTask

        def test_wraps_over_the_plugin(bg_client):
            wrapped = BackgroundTask.__dict__["__call__"]

            @functools.wraps(wrapped)
            async def traced(self):
                await wrapped(self)

            BackgroundTask.__call__ = traced
            bg_client.post("/work")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    (report,) = session_reports(pytester).values()
    assert report["changed at the end"] == ["BackgroundTask.__call__"]


def test_a_session_inside_a_test_leaves_the_outer_capture_running(
    pytester: pytest.Pytester, bgtasks: BackgroundTaskCapture
) -> None:
    """An in-process pytester session, inside a test that captures: at its end it stops the
    capture it left running, and leaves the outer test's capture (and the patches) alone."""
    pytester.makepyfile(
        """
        from pytest_bgtasks import BackgroundTaskCapture

        def test_uses_the_plugin(bgtasks):
            pass

        def test_leaves_a_capture_running():
            BackgroundTaskCapture().start()
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert _recorder.recorder.logs == [bgtasks]
    run_one_request()
    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.RAN
