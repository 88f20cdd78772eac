"""Turns what the Starlette patches see into records: one `Recorder` receives every task
created, added, called, and every request that starts and finishes, for all active captures.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import sys
import threading
import types
from typing import Any, Protocol

from . import _starlette
from ._matching import callable_name
from ._records import Site, TaskRecord, TaskRequest, TaskStatus


class Controller(Protocol):
    """The capture that decides what happens to tasks (the innermost `BackgroundTaskCapture`)."""

    _records: list[TaskRecord]

    async def _dispatch(self, record: TaskRecord) -> None: ...


class RequestScope:
    """One request while it runs: what it scheduled and how it ended."""

    __slots__ = ("batches", "error", "handled", "kind", "records", "request", "status")

    def __init__(self, kind: str, method: str, path: str) -> None:
        self.kind = kind
        self.request = TaskRequest(method, path)
        self.status: int | None = None
        self.error: BaseException | None = None
        self.handled: list[BaseException] = []
        self.records: list[TaskRecord] = []
        self.batches: list[Any] = []
        """The `BackgroundTasks` made while it ran (FastAPI makes one for each request)."""

    def note_handled(self, exc: BaseException) -> None:
        self.handled.append(exc)


class DeferredRun:
    """A deferred task being run by `run_deferred()`, and the tasks it schedules."""

    __slots__ = ("children", "record")

    def __init__(self, record: TaskRecord) -> None:
        self.record = record
        self.children: list[TaskRecord] = []


deferred_run: contextvars.ContextVar[DeferredRun | None] = contextvars.ContextVar(
    "pytest_bgtasksdeferred_run", default=None
)


class Recorder:
    """The one receiver of what the Starlette patches see, shared by all active captures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logs: list[Any] = []
        """Active captures and blocks, outermost first; each has a `_records` list."""
        self.records: list[TaskRecord] = []
        """Every record made while a capture is active. Its task carries it, as the attribute
        `_pytest_bgtasks_record`, until the last capture stops."""
        self.batches: list[Any] = []
        """The `BackgroundTasks` made outside any request while a capture is active."""
        self.by_task: dict[int, TaskRecord] = {}
        """Records of tasks that cannot carry an attribute (a subclass with `__slots__`)."""

    def controller(self) -> Any:
        """The innermost active capture that decides what happens to tasks, or None."""
        for log in reversed(self.logs):
            if log._controls:
                return log
        return None

    def push(self, log: Any) -> None:
        with self.lock:
            if log in self.logs:
                raise RuntimeError("This capture is active already.")
            _starlette.install()
            self.logs.append(log)
            _starlette.set_receiver(self)

    def pop(self, log: Any) -> None:
        with self.lock:
            if log in self.logs:
                self.logs.remove(log)
            if not self.logs:
                _starlette.set_receiver(None)
                for record in self.records:
                    close_coroutine(record.func)
                    with contextlib.suppress(AttributeError):
                        del record._task._pytest_bgtasks_record
                self.records.clear()
                self.batches.clear()
                self.by_task.clear()

    def record(self, task: Any) -> TaskRecord | None:
        """The record of `task` made while the captures are active, if any."""
        record = getattr(task, "_pytest_bgtasks_record", None) or self.by_task.get(id(task))
        return record if record is not None and record._task is task else None

    def _new_record(
        self, task: Any, site: Site | None, scope: RequestScope | None
    ) -> TaskRecord | None:
        # Called with the lock held, for every task: kept lean.
        logs = self.logs
        if not logs:
            return None
        record = TaskRecord(task, len(logs[0]._records), site, scope)
        for log in logs:
            log._records.append(record)
        self.records.append(record)
        try:
            task._pytest_bgtasks_record = record  # cheaper to keep than a dict entry
        except AttributeError:  # a task class that refuses new attributes
            self.by_task[id(task)] = record
        if scope is not None:
            scope.records.append(record)
        run = deferred_run.get()
        if run is not None:
            record._more().generation = run.record._details.generation + 1
            run.children.append(record)
        return record

    # -- what the patches report -----------------------------------------------------------

    def task_created(self, task: Any, site: Site | None, scope: Any) -> None:
        with self.lock:
            record = self._new_record(task, site, scope)
        func = task.func
        if record is not None and not isinstance(func, types.FunctionType):
            problem = misuse(func)
            if problem is not None:
                record._more().problem = problem

    def batch_created(self, batch: Any, scope: RequestScope | None) -> None:
        if self.logs:
            (scope.batches if scope is not None else self.batches).append(batch)

    def batch_of(self, record: TaskRecord) -> Any:
        """The `BackgroundTasks` that holds the record's task, among those made while a capture
        is active: in the task's request, or outside any request. None for a task given to a
        response on its own, or added to a batch made before the capture started."""
        scope = record._scope
        for batches in (scope.batches if scope is not None else [], self.batches):
            for batch in reversed(batches):
                if any(item is record._task for item in batch.tasks):
                    return batch
        return None

    async def task_called(self, task: Any) -> None:
        controller = self.controller()
        record = self._record_for_call(task) if controller is not None else None
        if controller is None or record is None:
            await _starlette.run_task(task)
            return
        await controller._dispatch(record)

    def request_started(self, kind: str, method: str, path: str) -> RequestScope:
        return RequestScope(kind, method, path)

    def request_finished(self, scope: RequestScope) -> None:
        for record in scope.records:
            if record.status is TaskStatus.PENDING and not record._started:
                settle_unstarted(record, scope)

    def _record_for_call(self, task: Any) -> TaskRecord | None:
        scope = _starlette.current_scope()
        with self.lock:
            record = self.record(task)
            if record is None:
                return self._new_record(task, None, scope)
            if not record._started:
                return record
            # The same BackgroundTask object runs again: a response reused across requests.
            again = self._new_record(task, record._site, scope)
        if again is not None:
            again._more().again_of = record
            again._more().problem = (
                f"this BackgroundTask object already ran as #{record.index} ({record!r}): "
                "a response object reused across requests runs its tasks again"
            )
        return again


recorder = Recorder()


def misuse(func: object) -> str | None:
    if inspect.iscoroutine(func):
        return (
            f"add_task() was given a coroutine object, {callable_name(func)}: pass the "
            "function and its arguments instead, add_task(func, *args)"
        )
    if not callable(func):
        return f"add_task() was given {func!r}, which is not callable"
    return None


def close_coroutine(value: object) -> None:
    """A coroutine object that nobody will await (given to add_task, or returned by a sync
    task): the plugin reports it, so close it rather than leave Python to warn "never awaited"
    at some later garbage collection, in whichever test that happens to be."""
    if inspect.iscoroutine(value):
        value.close()


def settle_unstarted(record: TaskRecord, scope: RequestScope) -> None:
    """A task of a finished request that nothing ever called: why not?"""
    error = scope.error
    details = record._more()
    if scope.kind == "websocket":
        record.status = TaskStatus.DROPPED
        details.reason = "never run: a WebSocket endpoint never runs background tasks"
        return
    if error is not None and is_cancellation(error):
        record.status = TaskStatus.CANCELLED
        details.reason = "never started: its request was cancelled"
        return
    record.status = TaskStatus.DROPPED
    details.excused = True
    if error is not None:
        details.reason = f"never run: the request raised {error!r}"
    elif scope.handled:
        details.reason = f"never run: the endpoint raised {scope.handled[-1]!r}" + (
            f", answered with {scope.status}" if scope.status is not None else ""
        )
    elif scope.status is not None and scope.status >= 400:
        details.reason = f"never run: the request ended with a {scope.status} response"
    else:
        details.excused = False
        details.reason = f"never run: {_why_not_carried(record, scope)}"


def _why_not_carried(record: TaskRecord, scope: RequestScope) -> str:
    started = [other for other in scope.records if other._started]
    batch = recorder.batch_of(record)
    if batch is not None and any(recorder.batch_of(other) is batch for other in started):
        return (
            "it was added to its BackgroundTasks after the response had run them "
            "(in the exit code of a dependency with yield?)"
        )
    if started:  # none of them from its batch
        return (
            f"the response carried {started[0].call} instead; an endpoint that returns a "
            "response with its own `background` replaces the injected BackgroundTasks"
        )
    return (
        "no response carried it (it was never given to the response that was sent: set on "
        "the injected `response` parameter, lost by a route class or middleware that rebuilt "
        "the response, or never passed as `background=`)"
    )


def is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)
