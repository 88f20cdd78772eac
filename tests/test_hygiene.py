"""The plugin leaves Starlette as it found it, shares it with other wrappers, and stays
inert when nothing captures."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.testclient import TestClient

import apps
from apps import sync_job
from pytest_bgtasks import BackgroundTaskCapture, TaskStatus, _recorder, _starlette


def current_call() -> Any:
    return BackgroundTask.__dict__["__call__"]


@pytest.fixture
def pristine() -> Iterator[Any]:
    """Starlette without the plugin's patches for the test; the session's state afterwards."""
    _starlette.uninstall()
    original = current_call()
    assert not hasattr(original, "__wrapped__")
    yield original
    _starlette.uninstall()
    BackgroundTask.__call__ = original  # type: ignore[method-assign]


def instrument(log: list[str]) -> Callable[[Any], Any]:
    """An instrumentation-style wrapper of BackgroundTask.__call__, as tracing libraries do."""
    wrapped = current_call()

    @functools.wraps(wrapped)
    async def traced(self: Any) -> None:
        log.append(f"start {self.func.__name__}")
        await wrapped(self)
        log.append(f"end {self.func.__name__}")

    BackgroundTask.__call__ = traced  # type: ignore[method-assign]
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


def test_patches_are_installed_once_and_removed_completely(pristine: Any) -> None:
    assert _starlette.install()
    assert not _starlette.install()
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


def test_the_patches_are_inert_without_a_capture(pristine: Any) -> None:
    _starlette.install()
    run_one_request()
    assert apps.ran == [("sync_job", "a")]
    assert _recorder.recorder.logs == []


def test_the_recorder_ignores_what_arrives_after_the_last_capture_stopped() -> None:
    # A server thread can report a task just after the test's capture stopped.
    task = BackgroundTask(sync_job, "late")
    recorder = _recorder.recorder
    recorder.task_created(task, None, None, None)
    assert recorder.record(task) is None
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
