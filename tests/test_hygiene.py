"""The plugin leaves Starlette as it found it, shares it with other wrappers, and stays
inert when nothing captures.

Outside pytest, Starlette is patched only while a capture is active: the scripts below, run in a
fresh Python, check that through the public API. Inside a pytest session the patches stay from
the first capture to the session's end, inert between captures: the session checks further down
run child sessions.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.testclient import TestClient

import apps
import pytest_bgtasks
from apps import sync_job
from pytest_bgtasks import BackgroundTaskCapture, TaskStatus, assert_task_count


def current_call() -> Any:
    return BackgroundTask.__dict__["__call__"]


def set_call(func: Any) -> None:
    """Put `func` in BackgroundTask.__call__'s place, as another library would."""
    BackgroundTask.__call__ = func  # type: ignore[method-assign]  # replacing it is the point


@pytest.fixture
def keep_call() -> Iterator[Any]:
    """BackgroundTask.__call__ as it is (the plugin's patch, in this session), put back after
    the test whatever the test put in its place."""
    kept = current_call()
    yield kept
    set_call(kept)


def run_one_request() -> None:
    with TestClient(apps.fastapi_app((sync_job, ("a",)))) as client:
        client.post("/work")


SCRIPT_PRELUDE = """
import functools
import anyio
from fastapi import BackgroundTasks, FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks as StarletteBackgroundTasks
from starlette.testclient import TestClient

from pytest_bgtasks import BackgroundTaskCapture, TaskStatus

done = []


def job(value):
    done.append(value)


def app():
    app = FastAPI()

    @app.post("/work")
    def work(background_tasks: BackgroundTasks):
        background_tasks.add_task(job, "x")
        return {}

    return app


def post():
    with TestClient(app()) as client:
        client.post("/work")


def watched():
    return {
        "BackgroundTask.__init__": BackgroundTask.__dict__["__init__"],
        "BackgroundTask.__call__": BackgroundTask.__dict__["__call__"],
        "BackgroundTasks.__init__": StarletteBackgroundTasks.__dict__["__init__"],
        "Starlette.__call__": Starlette.__dict__["__call__"],
    }


def changed(since):
    now = watched()
    return sorted(name for name in now if now[name] is not since[name])
"""


def run_script(pytester: pytest.Pytester, body: str) -> list[str]:
    """Run `body` after SCRIPT_PRELUDE in a fresh Python (no pytest session around it); its
    output lines."""
    path = pytester.path / "script.py"
    path.write_text(SCRIPT_PRELUDE + textwrap.dedent(body))
    result = pytester.run(sys.executable, str(path))
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    return result.stdout.lines


@pytest.mark.slow
def test_outside_pytest_wait_returns_the_records_and_free_assertions_ask_for_a_capture(
    pytester: pytest.Pytester,
) -> None:
    lines = run_script(
        pytester,
        """
        import pytest_bgtasks

        def assert_outside():
            try:
                pytest_bgtasks.assert_no_tasks()
            except RuntimeError as error:
                print("outside:", error)

        assert_outside()  # before any capture: nothing of the plugin is live yet
        with BackgroundTaskCapture() as capture:
            post()
        print("waited:", [str(record.status) for record in capture.wait()])
        assert_outside()
        """,
    )
    outside = (
        "outside: assert_no_tasks() needs an active background task capture: request the "
        "`bgtasks` or `bg_client` fixture (or mark the test with @pytest.mark.bgtasks)."
    )
    assert lines == [outside, "waited: ['ran']", outside]


@pytest.mark.slow
def test_outside_pytest_starlette_is_patched_only_while_a_capture_is_active(
    pytester: pytest.Pytester,
) -> None:
    lines = run_script(
        pytester,
        """
        before = watched()
        with BackgroundTaskCapture() as capture:
            print("inside:", ", ".join(changed(before)))
            post()
        print("after:", changed(before))
        print("recorded:", [str(record.status) for record in capture.tasks])
        with BackgroundTaskCapture() as again:
            with BackgroundTaskCapture(mode="skip") as inner:
                post()
            print("one still active:", len(changed(before)))
        print("after both:", changed(before))
        post()
        print("done:", done, len(again.tasks), len(inner.tasks))
        """,
    )
    assert lines == [
        "inside: BackgroundTask.__call__, BackgroundTask.__init__, BackgroundTasks.__init__, "
        "Starlette.__call__",
        "after: []",
        "recorded: ['ran']",
        "one still active: 4",
        "after both: []",
        "done: ['x', 'x'] 1 1",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("order", ["wrapper-first", "plugin-first"])
def test_another_wrapper_of_the_call_keeps_working_and_so_does_the_plugin(
    pytester: pytest.Pytester, order: str
) -> None:
    lines = run_script(
        pytester,
        f"""
        log = []
        pristine = BackgroundTask.__dict__["__call__"]

        def instrument():
            wrapped = BackgroundTask.__dict__["__call__"]

            @functools.wraps(wrapped)
            async def traced(self):
                log.append("start")
                await wrapped(self)
                log.append("end")

            BackgroundTask.__call__ = traced

        if {order!r} == "wrapper-first":
            instrument()
        with BackgroundTaskCapture() as capture:
            if {order!r} == "plugin-first":
                instrument()
            post()
        print("recorded:", [str(record.status) for record in capture.tasks], log, done)
        post()  # no capture: the other wrapper goes on working
        print("without capture:", log, done)
        top = BackgroundTask.__dict__["__call__"]
        print("under the wrapper:", top.__wrapped__ is pristine)
        with BackgroundTaskCapture() as again:  # through the other wrapper again
            post()
        print("again:", [str(record.status) for record in again.tasks], len(log), len(done))
        """,
    )
    under = "True" if order == "wrapper-first" else "False"  # else ours, left inert under it
    assert lines == [
        "recorded: ['ran'] ['start', 'end'] ['x']",
        "without capture: ['start', 'end', 'start', 'end'] ['x', 'x']",
        f"under the wrapper: {under}",
        "again: ['ran'] 6 3",
    ]


@pytest.mark.slow
def test_a_second_import_of_the_plugin_takes_over_its_patches(pytester: pytest.Pytester) -> None:
    """What pytester's in-process runs do: the plugin's modules imported afresh while the
    first import's patches are still in place. The new ones find them, and stack nothing."""
    lines = run_script(
        pytester,
        """
        import sys

        before = watched()
        first = BackgroundTaskCapture()
        first.start()
        for name in [name for name in sys.modules if name.startswith("pytest_bgtasks")]:
            del sys.modules[name]
        from pytest_bgtasks import BackgroundTaskCapture as Fresh

        with Fresh() as capture:
            post()
            top = BackgroundTask.__dict__["__call__"]
            print("one patch:", top.__wrapped__ is before["BackgroundTask.__call__"])
        print("recorded once:", [str(record.status) for record in capture.tasks], done)
        """,
    )
    assert lines == ["one patch: True", "recorded once: ['ran'] ['x']"]


@pytest.mark.slow
def test_a_coroutine_object_that_never_ran_is_closed_when_the_capture_ends(
    pytester: pytest.Pytester,
) -> None:
    lines = run_script(
        pytester,
        """
        import inspect

        async def send():
            pass

        with BackgroundTaskCapture() as capture:
            coroutine = send()
            StarletteBackgroundTasks().add_task(coroutine)
            print(inspect.getcoroutinestate(coroutine))
        # Nothing will ever await it: closed, so Python does not warn "never awaited" in some
        # later test when it is collected.
        print(inspect.getcoroutinestate(coroutine))
        """,
    )
    assert lines == ["CORO_CREATED", "CORO_CLOSED"]


def test_a_patch_something_put_back_is_installed_again(
    bgtasks: BackgroundTaskCapture, keep_call: Any
) -> None:
    set_call(keep_call.__wrapped__)  # restored by someone
    with BackgroundTaskCapture() as capture:  # a capture starting checks its patches
        run_one_request()
    capture.assert_task_ran(sync_job, "a")
    assert current_call().__wrapped__ is keep_call.__wrapped__


def wrapped_over(inner: Any, depth: int, *, closure_only: bool = False) -> Any:
    """`inner` under `depth` instrumentation wrappers; with `closure_only`, wrappers that keep
    what they wrap in their closure and say nothing of it (no `__wrapped__`)."""
    for _ in range(depth):

        async def outer(self: Any, inner: Any = inner) -> None:
            await inner(self)

        if closure_only:

            def make(wrapped: Any) -> Any:
                async def outer(self: Any) -> None:
                    await wrapped(self)

                return outer

            inner = make(inner)
        else:
            inner = functools.wraps(inner)(outer)
    return inner


@pytest.mark.parametrize("closure_only", [False, True], ids=["wraps", "closure"])
def test_the_patch_is_found_under_31_wrappers(
    bgtasks: BackgroundTaskCapture, keep_call: Any, closure_only: bool
) -> None:
    set_call(wrapped_over(keep_call, 31, closure_only=closure_only))
    with BackgroundTaskCapture() as capture:
        run_one_request()
    # Found, not stacked: the task is recorded once, by both captures.
    (record,) = capture.tasks
    assert record.status is TaskStatus.RAN
    assert bgtasks.tasks == [record]
    assert apps.ran == [("sync_job", "a")]


def test_a_wrapper_whose_wrapped_chain_loops_is_not_the_plugins(
    bgtasks: BackgroundTaskCapture, keep_call: Any
) -> None:
    async def looping(self: Any) -> None:
        await keep_call(self)

    functools.update_wrapper(looping, looping)  # its __wrapped__ is itself
    set_call(looping)
    with BackgroundTaskCapture() as capture:
        run_one_request()
    capture.assert_task_ran(sync_job, "a")
    assert len(bgtasks.tasks) == 1


def test_the_public_names_load_from_the_package() -> None:
    for name in pytest_bgtasks.__all__:
        value = getattr(pytest_bgtasks, name)
        assert getattr(value, "__module__", "pytest_bgtasks").startswith("pytest_bgtasks"), name
    assert set(pytest_bgtasks.__all__) <= set(dir(pytest_bgtasks))
    with pytest.raises(AttributeError) as error:
        pytest_bgtasks.assert_taks_added  # noqa: B018
    assert str(error.value) == "module 'pytest_bgtasks' has no attribute 'assert_taks_added'"


def test_the_patches_are_inert_without_a_capture(bgtasks: BackgroundTaskCapture) -> None:
    bgtasks.mode = "skip"
    run_one_request()
    assert apps.ran == []
    bgtasks.stop()
    try:
        run_one_request()
        assert apps.ran == [("sync_job", "a")]  # the capture's mode went with it
        with (
            pytest.raises(ZeroDivisionError, match=r"^boom now$"),
            TestClient(apps.fastapi_app((apps.boom, ("now",)))) as client,
        ):
            client.post("/work")  # a task's exception reaches the client as without the plugin
    finally:
        bgtasks.start()
    assert len(bgtasks.tasks) == 1


def test_a_task_called_after_its_capture_stopped_runs_as_without_the_plugin(
    bgtasks: BackgroundTaskCapture,
) -> None:
    # A server thread can run a task just after the test's capture stopped.
    task = BackgroundTask(sync_job, "late")
    (record,) = bgtasks.tasks
    bgtasks.stop()
    try:
        anyio.run(task)
        misused = BackgroundTask(42)  # type: ignore[arg-type]  # what a record would report
    finally:
        bgtasks.start()
    assert apps.ran == [("sync_job", "late")]
    assert record.status is TaskStatus.PENDING  # its capture was gone: nothing recorded
    assert misused.func == 42
    assert len(bgtasks.tasks) == 1


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

from starlette.applications import Starlette

try:  # Starlette >= 0.28
    import starlette._exception_handler as handler_owner
except ImportError:  # 0.27: a method of ExceptionMiddleware
    from starlette.middleware.exceptions import ExceptionMiddleware as handler_owner

originals = {}
patched_during_the_session = set()


def attributes():
    # What the plugin patches, and what it must leave alone.
    watched = [
        (BackgroundTask, "__init__"),
        (BackgroundTask, "__call__"),
        (StarletteBackgroundTasks, "__init__"),
        (Starlette, "__call__"),
        (handler_owner, "_lookup_exception_handler"),
    ]
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
from pytest_bgtasks import BackgroundTaskCapture


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
    from conftest import changed

    with BackgroundTaskCapture(mode="skip") as capture, TestClient(app) as client:
        client.post("/work")
        patched_inside = changed()
    assert done == []
    assert "BackgroundTask.__call__" in patched_inside
    # Capture stopped: whether the patches stay (a test of the session used the fixture) or
    # not, they neither record nor change a thing.
    with TestClient(app) as client:
        client.post("/work")
    assert done == ["x"]
    assert len(capture.tasks) == 1


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


TARGETS = sorted(
    [
        "BackgroundTask.__call__",
        "BackgroundTask.__init__",
        "BackgroundTasks.__init__",
        "Starlette.__call__",
        "starlette._exception_handler._lookup_exception_handler"
        if importlib.util.find_spec("starlette._exception_handler") is not None
        else "ExceptionMiddleware._lookup_exception_handler",
    ]
)
"""What the plugin patches (as the session check names it): Starlette's execution choke point
and where tasks are created, requests, and the exception-handler lookup."""


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
            [*TARGETS, "BackgroundTasks.__call__", "BackgroundTasks.add_task"]
        )
        # The check can fail: the patches were in place while the tests ran (the core alone
        # patches only while its capture runs, inside the test: its test checks that)...
        if "core_alone" in args:
            assert report["patched during the session"] == [], name
        elif name in workers or not workers:
            assert report["patched during the session"] == TARGETS, name
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
    run_one_request()
    (record,) = bgtasks.tasks
    assert record.status is TaskStatus.RAN
